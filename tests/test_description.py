"""TaskDescription turns a command name, arguments and options into an argv list (never a shell string),
refuses every value a command line cannot carry with a message naming it, and its job body codec round-trips
good bodies and rejects every malformed one as MalformedBody."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from pheanq.body import decode_body, decode_data, encode_body, encode_data
from pheanq.description import TaskDescription, build_argv
from pheanq.errors import InvalidInput, MalformedBody
from pheanq.limits import MAX_BODY_BYTES, MAX_INT_DIGITS


def test_arguments_of_every_kind_become_argv_items_unquoted() -> None:
    tricky = ["a b", "it's \"quoted\"", "ünïcødé ✓", "$(rm -rf /); `x` | y > z", "", "-n", "--not-an-option"]
    description = TaskDescription("cmd", [*tricky, 0, 42, -7])
    assert description.command_line() == [*tricky, "0", "42", "-7"]


def test_options_become_flags_and_name_value_pairs_in_the_order_given() -> None:
    description = TaskDescription("cmd", ["x"], {
        "zeta": "two words", "flag": True, "off": False, "count": 3, "neg": -5, "quote": "it's", "uni": "é ✓",
        "empty": "", "alpha": 1,
    })
    assert description.command_line() == [
        "x", "--zeta=two words", "--flag", "--count=3", "--neg=-5", "--quote=it's", "--uni=é ✓", "--empty=",
        "--alpha=1",
    ]


def test_argv_is_the_registered_prefix_then_arguments_then_options() -> None:
    description = TaskDescription("invoice", ["a b;c", 9], {"send": True, "to": "x y"})
    argv = build_argv(("/usr/bin/env", "python3", "-m", "app"), description)
    assert argv == ["/usr/bin/env", "python3", "-m", "app", "a b;c", "9", "--send", "--to=x y"]
    assert all(isinstance(item, str) for item in argv)


def test_a_description_with_nothing_but_a_command_has_an_empty_command_line() -> None:
    assert TaskDescription("a.b:c_d-e").command_line() == []


@pytest.mark.parametrize("command", ["", "two words", "rm;ls", "a/b", "name\n", "$(x)", "é", 42, b"cmd"])
def test_a_bad_command_name_is_refused_with_its_value_in_the_message(command: Any) -> None:
    with pytest.raises(InvalidInput, match="command") as caught:
        TaskDescription(command)
    assert repr(command) in str(caught.value)


@pytest.mark.parametrize(("value", "kind"), [
    (True, "bool"), (False, "bool"), (1.5, "float"), (None, "NoneType"), (["a"], "list"), ({"a": 1}, "dict"),
    (b"x", "bytes"),
])
def test_an_argument_of_a_type_argv_cannot_carry_is_refused_naming_its_position_and_type(value: Any,
                                                                                         kind: str) -> None:
    with pytest.raises(InvalidInput, match=f"argument 1 is {kind}"):
        TaskDescription("cmd", ["fine", value])


def test_a_nul_byte_in_an_argument_or_option_is_refused() -> None:
    with pytest.raises(InvalidInput, match="argument 0 contains a NUL byte"):
        TaskDescription("cmd", ["a\x00b"])
    with pytest.raises(InvalidInput, match="option 'name' contains a NUL byte"):
        TaskDescription("cmd", [], {"name": "a\x00b"})


def test_text_that_is_not_valid_unicode_is_refused_before_it_reaches_the_queue() -> None:
    with pytest.raises(InvalidInput, match="argument 0 is not valid Unicode text"):
        TaskDescription("cmd", ["lone \ud800 surrogate"])
    with pytest.raises(InvalidInput, match="option 'o' is not valid Unicode text"):
        TaskDescription("cmd", [], {"o": "\udcff"})


@pytest.mark.parametrize("name", ["", "--flag", "two words", "a=b", "é", "flag\n", 3, None])
def test_a_bad_option_name_is_refused_with_the_name_in_the_message(name: Any) -> None:
    with pytest.raises(InvalidInput, match="option name") as caught:
        TaskDescription("cmd", [], {name: True})
    assert repr(name) in str(caught.value)


@pytest.mark.parametrize(("value", "kind"), [(1.5, "float"), (None, "NoneType"), (["a"], "list"), (b"x", "bytes")])
def test_an_option_value_that_is_not_str_int_or_bool_is_refused_naming_the_option(value: Any, kind: str) -> None:
    with pytest.raises(InvalidInput, match=f"option 'ratio' is {kind}"):
        TaskDescription("cmd", [], {"ratio": value})


class SendInvoice(TaskDescription):
    command = "invoice"

    def __init__(self, invoice_id: int, *, email: bool = True, note: str = "") -> None:
        super().__init__(arguments=[invoice_id], options={"email": email, "note": note})


def test_a_subclass_with_a_class_level_command_and_its_own_init_builds_its_argv() -> None:
    task = SendInvoice(42, email=False, note="paid late")
    assert task.command == "invoice"
    assert task.command_line() == ["42", "--note=paid late"]
    assert task.type_name == f"{__name__}.SendInvoice"


def test_a_subclass_checks_its_values_like_the_base_class() -> None:
    with pytest.raises(InvalidInput, match="argument 0 is float"):
        SendInvoice(4.2)  # type: ignore[arg-type]


def test_a_subclass_without_a_command_is_refused() -> None:
    class Nameless(TaskDescription):
        pass

    with pytest.raises(InvalidInput, match="command ''"):
        Nameless()


def test_the_stored_data_records_the_type_and_reads_back_equal() -> None:
    task = SendInvoice(7, note="ü")
    data = json.loads(encode_data(task))
    assert data == {"command": "invoice", "arguments": [7], "options": {"email": True, "note": "ü"},
                    "type": f"{__name__}.SendInvoice"}
    again = decode_data(encode_data(task))
    assert again == task
    assert again.command_line() == task.command_line()


def test_a_job_body_round_trips_task_id_and_description() -> None:
    description = TaskDescription("cmd", ["a b", "ü ✓", -1, 0], {"f": True, "g": False, "n": -2, "s": "x=y"})
    body = encode_body(123, description)
    assert isinstance(body, bytes)
    decoded = decode_body(body)
    assert decoded.task_id == 123
    assert decoded.description == description
    assert decoded.description.command_line() == description.command_line()


def test_a_description_too_big_for_a_job_body_is_refused_naming_the_limit() -> None:
    with pytest.raises(InvalidInput, match=f"at most {MAX_BODY_BYTES}"):
        encode_body(1, TaskDescription("cmd", ["x" * MAX_BODY_BYTES]))


def test_a_body_just_under_the_limit_is_accepted() -> None:
    overhead = len(encode_body(1, TaskDescription("cmd", [""])))
    body = encode_body(1, TaskDescription("cmd", ["x" * (MAX_BODY_BYTES - overhead)]))
    assert len(body) == MAX_BODY_BYTES
    assert decode_body(body).task_id == 1


def _body(**fields: Any) -> bytes:
    data: dict[str, Any] = {"pheanq": 1, "task_id": 5, "description": {"command": "cmd", "arguments": [],
                                                                        "options": {}}}
    data.update(fields)
    return json.dumps(data).encode()


@pytest.mark.parametrize("raw", [
    b"", b"\xff\xfe\x00garbage", b"not json", b"{", b"[1, 2]", b'"text"', b"null", b"42",
    b"[" * 50000, b'{"pheanq": 1, "task_id": 5, "description": ' + b"[" * 50000,
    json.dumps({"task_id": 5}).encode(),
    _body(pheanq=2), _body(pheanq="1"), _body(pheanq=True), _body(pheanq=1.0),
    _body(task_id=-1), _body(task_id=0), _body(task_id=True), _body(task_id="5"), _body(task_id=5.0),
    _body(task_id=None),
    _body(description=["cmd"]), _body(description="cmd"), _body(description=None),
    _body(description={"command": "bad name", "arguments": [], "options": {}}),
    _body(description={"arguments": [], "options": {}}),
    _body(description={"command": "cmd", "arguments": "a b", "options": {}}),
    _body(description={"command": "cmd", "arguments": [1.5], "options": {}}),
    _body(description={"command": "cmd", "arguments": [None], "options": {}}),
    _body(description={"command": "cmd", "arguments": [], "options": ["--x"]}),
    _body(description={"command": "cmd", "arguments": [], "options": {"x": None}}),
    _body(description={"command": "cmd", "arguments": [], "options": {"--x": True}}),
])
def test_a_body_that_is_not_a_well_formed_pheanq_job_is_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedBody) as caught:
        decode_body(raw)
    message = str(caught.value)
    assert message and "\n" not in message
    assert len(message) < 300  # a preview, never the whole body


def test_a_malformed_description_names_the_task_it_belongs_to() -> None:
    with pytest.raises(MalformedBody, match="task 5: argument 0 is float"):
        decode_body(_body(description={"command": "cmd", "arguments": [1.5], "options": {}}))


def test_no_command_given_means_the_class_level_command() -> None:
    assert SendInvoice(1).command == "invoice"
    with pytest.raises(InvalidInput, match="command ''"):
        TaskDescription(None)


@pytest.mark.parametrize(("arguments", "options", "what"), [
    ([10**4400], {}, "argument 0"),
    ([1, -(10**4400)], {}, "argument 1"),
    ([], {"count": 10**4400}, "option 'count'"),
])
def test_a_whole_number_too_long_to_write_out_is_refused_as_invalid_input_naming_it(
    arguments: list[Any], options: dict[str, Any], what: str,
) -> None:
    # Python writes out at most 4300 digits of an int: such a value could reach neither the command line nor
    # the JSON body, and queue_task raised a bare ValueError for it.
    with pytest.raises(InvalidInput, match=f"^{what} is a whole number of more than 4300 digits"):
        TaskDescription("cmd", arguments, options)
    assert TaskDescription("cmd", [10**4000]).arguments == [10**4000]  # below the limit it is a plain argument


def test_an_int_of_more_digits_than_a_worker_reads_is_refused_whatever_limit_the_producer_set() -> None:
    """A producer that raised its own int-to-text limit (or turned it off) used to make a body every worker
    buried as "not JSON", and whose row stopped the reconciler."""
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        with pytest.raises(InvalidInput, match=f"argument 0 is a whole number of more than {MAX_INT_DIGITS} digits"):
            TaskDescription("cmd", [10**MAX_INT_DIGITS])
        with pytest.raises(InvalidInput, match="option 'n' is a whole number of more than"):
            TaskDescription("cmd", [], {"n": -(10**MAX_INT_DIGITS)})
        widest = 10**MAX_INT_DIGITS - 1  # MAX_INT_DIGITS nines: what every worker still reads
    finally:
        sys.set_int_max_str_digits(limit)
    assert decode_body(encode_body(1, TaskDescription("cmd", [widest]))).description.arguments == [widest]


@pytest.mark.parametrize("secret", [None, "s3cret"])
def test_a_body_built_from_the_rows_data_is_the_very_bytes_one_encoding_of_the_whole_gives(secret: str | None) -> None:
    """encode_body reuses the description's text from the row (encoded once per task, not three times): the bytes,
    which a signature covers, are those of one json.dumps of the whole body, the description last."""
    description = TaskDescription("cmd", ["é ☃ \"quoted\"", 42, "\\\\back"], {"flag": "x"})
    nonce = "ab" * 8
    whole = json.dumps({"pheanq": 1, "task_id": 77, "nonce": nonce, "description": description.to_data()},
                       separators=(",", ":"), ensure_ascii=False).encode()
    from_data = encode_body(77, description, secret, nonce, encode_data(description))
    assert from_data == encode_body(77, description, secret, nonce)
    if secret is None:
        assert from_data == whole
    assert decode_body(from_data, secret).description == description
