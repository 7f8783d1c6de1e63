// pheanq dashboard: confirmations before actions, "tick all", and the overview's charts (uPlot, fed by
// /api/activity every 10 s). Loaded as a file of this site: the content security policy allows no inline script.
(function () {
  "use strict";
  var root = document.body.getAttribute("data-root") || "";

  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-confirm]");
    if (!button) return;
    if (!window.confirm(button.getAttribute("data-confirm"))) { event.preventDefault(); return; }
    var scope = button.getAttribute("data-scope");
    var field = button.form && button.form.querySelector("input[name=scope]");
    if (scope && field) field.value = scope;
  });

  document.addEventListener("change", function (event) {
    if (event.target.id !== "tick-all") return;
    var ticks = document.querySelectorAll("input.tick");
    for (var i = 0; i < ticks.length; i++) ticks[i].checked = event.target.checked;
  });

  var throughput = document.getElementById("chart-throughput");
  var wait = document.getElementById("chart-wait");
  if (!throughput || !wait || typeof uPlot === "undefined") return;
  var charts = {};

  function draw(element, key, title, series, data) {
    var width = element.clientWidth - 10;
    if (charts[key]) { charts[key].setData(data); return; }
    charts[key] = new uPlot({ title: title, width: width, height: 220, series: series,
                              axes: [{}, { size: 60 }], scales: { x: { time: true } } }, data, element);
  }

  function refresh() {
    var windowName = document.getElementById("chart-window").value;
    var tube = document.getElementById("chart-tube").value;
    var url = root + "/api/activity?window=" + encodeURIComponent(windowName) +
              (tube ? "&tube=" + encodeURIComponent(tube) : "");
    fetch(url, { credentials: "same-origin" }).then(function (answer) { return answer.json(); }).then(function (found) {
      var per = found.bucket_seconds === 60 ? "minute" : (found.bucket_seconds / 60) + " minutes";
      draw(throughput, "throughput", "Tasks ended per " + per,
           [{}, { label: "done", stroke: "#1f883d", width: 2 }, { label: "failed", stroke: "#cf222e", width: 2 }],
           [found.times, found.done, found.failed]);
      draw(wait, "wait", "Queue wait (seconds, from a sample of each bucket)",
           [{}, { label: "p50", stroke: "#2756c5", width: 2 }, { label: "p95", stroke: "#9a6700", width: 2 }],
           [found.times, found.wait_p50, found.wait_p95]);
      document.body.setAttribute("data-charts", "drawn");
    });
  }

  function restart() {
    for (var key in charts) { charts[key].destroy(); delete charts[key]; }
    refresh();
  }
  document.getElementById("chart-window").addEventListener("change", restart);
  document.getElementById("chart-tube").addEventListener("change", restart);
  refresh();
  setInterval(refresh, 10000);
})();
