from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies: list[tuple[str, str]] = []
    operations = [
        migrations.CreateModel(
            name="Invoice",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("number", models.CharField(max_length=32)),
                ("amount_cents", models.IntegerField()),
                ("paid", models.BooleanField(default=False)),
                ("paid_by_task", models.BigIntegerField(null=True)),
            ],
        ),
    ]
