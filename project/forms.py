"""Form fields shared by the apps' admin pages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.db import models
from django.forms.fields import InvalidJSONInput

from project.inputs import json_depth_problem, json_value_problem


class StorableJSONField(forms.JSONField):
    """Django's JSON form field, refusing with a message what would fail later as a 500.

    Text nesting past the shared limit (Django's parser would recurse into a
    RecursionError, on reading and on showing the form again), and values the
    database cannot store: text with NUL characters (PostgreSQL) or lone
    surrogates (UTF-8), numbers too big for a float (1e999 reads as infinity).
    Refused text is shown again as typed.
    """

    def to_python(self, value: Any) -> Any:
        if isinstance(value, str) and not self.disabled:
            problem = json_depth_problem(value)
            if problem:
                raise ValidationError(f"This JSON {problem}.", code="invalid")
        converted = super().to_python(value)
        found = json_value_problem(converted)
        if found:
            where, problem = found
            message = f"{where.lstrip('.')}: {problem}." if where else f"This JSON {problem}."
            raise ValidationError(message, code="invalid")
        return converted

    def bound_data(self, data: Any, initial: Any) -> Any:
        if isinstance(data, str) and not self.disabled:
            try:
                self.to_python(data)
            except ValidationError:
                return InvalidJSONInput(data)
        return super().bound_data(data, initial)


# For a ModelAdmin's or an inline's formfield_overrides.
STORABLE_JSON: Mapping[type[models.Field[Any, Any]], Mapping[str, Any]] = {
    models.JSONField: {"form_class": StorableJSONField}
}
