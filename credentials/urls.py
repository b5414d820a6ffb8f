from __future__ import annotations

from django.urls import path

from credentials import views

app_name = "credentials"

urlpatterns = [
    path("badges/<slug:key>/credential.jwt", views.download, name="download"),
    path(".well-known/jwks.json", views.jwks, name="jwks"),
    path("ob/keys/<slug:kid>", views.key, name="key"),
    path("ob/issuer", views.issuer, name="issuer"),
    path("ob/achievements/<slug:key>", views.achievement, name="achievement"),
    path("ob/achievements/<slug:key>/tiers/<int:tier>", views.achievement, name="tier"),
    path("ob/verify", views.verify_api, name="verify_api"),
    path("verify/", views.verify_page, name="verify"),
]
