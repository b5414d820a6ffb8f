from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _

from examples.places.models import Photo, Place, Visit

MAX_IMAGE_BYTES = 2 * 1024 * 1024


class VisitForm(forms.ModelForm):
    place = forms.ModelChoiceField(
        queryset=Place.objects.all(), empty_label=_("Choose a place…"), label=_("Place")
    )

    class Meta:
        model = Visit
        fields = ["place"]


class PhotoForm(forms.ModelForm):
    class Meta:
        model = Photo
        fields = ["caption", "image"]
        help_texts = {"image": _("A JPEG, PNG, GIF or WebP image up to 2 MB.")}

    def clean_image(self):
        image = self.cleaned_data["image"]
        if image and image.size > MAX_IMAGE_BYTES:
            raise forms.ValidationError(
                _("The image is larger than 2 MB; please pick a smaller one.")
            )
        return image
