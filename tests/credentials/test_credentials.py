"""Open Badges 3.0 credentials: issued for a held earning, signed with the site's
key, checked here with jwcrypto (an independent JOSE library), verified by the
site, and refused once tampered with, expired, revoked or signed by a retired key."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone
from jwcrypto import jwk, jws, jwt

from achievements.awards import Actor, revoke_badge
from achievements.engine import evaluate_event
from achievements.events import record_event
from achievements.models import Badge
from credentials.models import IssuedCredential, SigningKey
from tests.factories import make_places_badge


def visit(user, place: int = 1) -> None:
    evaluate_event(record_event(user, "visit.created", payload={"place_id": place}).event.pk)


@pytest.fixture
def holder(client, owner):
    make_places_badge(threshold=1)
    visit(owner)
    client.force_login(owner)
    return owner


def download(client, key: str = "places_visited_1") -> str:
    response = client.get(f"/badges/{key}/credential.jwt")
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/vc+jwt"
    assert response["Content-Disposition"] == f'attachment; filename="{key}.jwt"'
    return response.content.decode()


def published_keys(client) -> jwk.JWKSet:
    return jwk.JWKSet.from_json(client.get("/.well-known/jwks.json").content)


def test_a_held_badge_downloads_as_a_credential_an_independent_library_verifies(client, holder):
    token = download(client)
    keys = published_keys(client)
    checked = jwt.JWT(jwt=token, key=keys, algs=["RS256"], expected_type="JWS")
    header = json.loads(checked.header)
    claims = json.loads(checked.claims)
    assert header["alg"] == "RS256" and header["typ"] == "vc+jwt"
    assert header["kid"] in {key["kid"] for key in keys.export(as_dict=True)["keys"]}
    # The key the header names is published where the name points.
    published = client.get(header["kid"].removeprefix("http://testserver")).json()
    assert published["kid"] == header["kid"] and published["kty"] == "RSA"
    assert jwt.JWT(jwt=token, key=jwk.JWK(**published), algs=["RS256"]).claims

    # An OpenBadgeCredential (VC 2.0 with the OB 3.0 context), with what the spec requires.
    assert claims["@context"] == [
        "https://www.w3.org/ns/credentials/v2",
        "https://purl.imsglobal.org/spec/ob/v3p0/context-3.0.3.json",
    ]
    assert claims["type"] == ["VerifiableCredential", "OpenBadgeCredential"]
    assert claims["id"].startswith("urn:uuid:") and claims["jti"] == claims["id"]
    assert claims["issuer"] == {
        "id": "http://testserver/ob/issuer",
        "type": ["Profile"],
        "name": "Accolade",
        "url": "http://testserver/",
    }
    assert claims["iss"] == claims["issuer"]["id"]
    subject = claims["credentialSubject"]
    assert subject["type"] == ["AchievementSubject"] and claims["sub"] == subject["id"]
    assert f'"{holder.username}"' not in json.dumps(claims)
    achievement = subject["achievement"]
    assert achievement["type"] == ["Achievement"]
    assert achievement["id"] == "http://testserver/ob/achievements/places_visited_1"
    assert achievement["name"] == "1 Places Visited"
    assert achievement["criteria"] == {"narrative": "Reached: 1 different places."}
    assert achievement["image"]["type"] == "Image"
    assert claims["validFrom"].endswith("Z") and "validUntil" not in claims
    assert claims["nbf"] <= timezone.now().timestamp()
    # The documents it points at are served.
    assert client.get("/ob/issuer").json()["name"] == "Accolade"
    assert client.get("/ob/achievements/places_visited_1").json()["name"] == "1 Places Visited"

    # The same earning keeps its credential id; the site's verifier says valid.
    assert json.loads(jwt.JWT(jwt=download(client), key=keys).claims)["id"] == claims["id"]
    result = client.post("/ob/verify", token, content_type="application/vc+jwt").json()
    assert (result["verified"], result["outcome"]) == (True, "valid")
    assert [check["check"] for check in result["checks"]] == [
        "signature",
        "issuer",
        "dates",
        "status",
    ]


def test_a_changed_credential_fails_its_signature_everywhere(client, holder):
    token = download(client)
    header, payload, signature = token.split(".")
    claims = json.loads(jws.base64url_decode(payload))
    claims["credentialSubject"]["achievement"]["name"] = "Gold Champion"
    forged = ".".join([header, jws.base64url_encode(json.dumps(claims)), signature])
    with pytest.raises((jws.InvalidJWSSignature, jwt.JWKeyNotFound)):
        jwt.JWT(jwt=forged, key=published_keys(client), algs=["RS256"])
    result = client.post("/ob/verify", forged, content_type="text/plain").json()
    assert (result["verified"], result["outcome"]) == (False, "invalid")
    assert "changed after it was signed" in result["checks"][-1]["detail"]


def test_a_revoked_earning_verifies_as_revoked(client, holder, staff_user):
    token = download(client)
    revoke_badge(
        user_id=holder.pk,
        badge=Badge.objects.get(key="places_visited_1"),
        reason="Awarded by mistake",
        by=Actor(user_id=staff_user.pk),
    )
    result = client.post("/ob/verify", {"credential": token}, content_type="application/json")
    body = result.json()
    assert (body["verified"], body["outcome"], body["title"]) == (False, "revoked", "Revoked")
    assert "took this badge back" in body["checks"][-1]["detail"]
    # And there is nothing to download any more.
    assert client.get("/badges/places_visited_1/credential.jwt").status_code == 404


def test_an_expiring_badge_says_until_when_and_verifies_as_expired_after(
    client, owner, monkeypatch
):
    badge = make_places_badge(threshold=1)
    Badge.objects.filter(pk=badge.pk).update(valid_days=30)
    visit(owner)
    client.force_login(owner)
    token = download(client)
    claims = json.loads(jwt.JWT(jwt=token, key=published_keys(client)).claims)
    assert "validUntil" in claims and claims["exp"] > claims["nbf"]
    later = timezone.now() + timedelta(days=31)
    monkeypatch.setattr(timezone, "now", lambda: later)
    body = client.post("/ob/verify", token, content_type="application/vc+jwt").json()
    assert (body["verified"], body["outcome"]) == (False, "expired"), body


def test_a_rotated_key_keeps_old_credentials_valid_until_it_is_retired(client, holder):
    old_token = download(client)
    old = SigningKey.objects.get()
    call_command("signing_keys", "rotate")
    new_token = download(client)
    assert json.loads(jws.base64url_decode(new_token.split(".")[0]))["kid"].endswith(
        SigningKey.current().kid
    )
    kids = [key["kid"] for key in client.get("/.well-known/jwks.json").json()["keys"]]
    assert len(kids) == 2
    for token in (old_token, new_token):
        assert client.post("/ob/verify", token, content_type="text/plain").json()["verified"]
    call_command("signing_keys", "retire", old.kid)
    assert len(client.get("/.well-known/jwks.json").json()["keys"]) == 1
    body = client.post("/ob/verify", old_token, content_type="text/plain").json()
    assert (body["verified"], body["outcome"]) == (False, "unknown")
    assert client.post("/ob/verify", new_token, content_type="text/plain").json()["verified"]


def test_a_credential_from_elsewhere_is_not_ours(client, holder):
    stranger = jwk.JWK.generate(kty="RSA", size=2048)
    foreign = jwt.JWT(
        header={"alg": "RS256", "kid": "http://testserver/ob/keys/0123456789abcdef"},
        claims={"type": ["OpenBadgeCredential"], "id": "urn:uuid:x"},
    )
    foreign.make_signed_token(stranger)
    body = client.post("/ob/verify", foreign.serialize(), content_type="text/plain").json()
    assert body["outcome"] == "unknown"


@pytest.mark.parametrize(
    ("body", "content_type", "error"),
    [
        ("", "text/plain", "credential: send the credential"),
        ("{not json", "application/json", "not JSON"),
        ('{"credential": 5}', "application/json", "credential: give the credential"),
        ("x" * 30_000, "text/plain", "credential: too long"),
    ],
)
def test_the_verify_api_refuses_a_request_without_a_credential(
    client, db, body, content_type, error
):
    response = client.post("/ob/verify", body, content_type=content_type)
    assert response.status_code == 400 and error in response.json()["error"]


def test_garbage_is_reported_as_not_a_credential(client, db):
    body = client.post("/ob/verify", "hello.world", content_type="text/plain").json()
    assert (body["verified"], body["outcome"]) == (False, "invalid")


def test_the_verify_page_checks_a_pasted_or_uploaded_credential(client, holder):
    from django.core.files.uploadedfile import SimpleUploadedFile

    token = download(client)
    client.logout()
    page = client.post("/verify/", {"credential": token})
    assert page.status_code == 200 and "Valid" in page.content.decode()
    upload = SimpleUploadedFile("places.jwt", token.encode(), content_type="application/vc+jwt")
    uploaded = client.post("/verify/", {"file": upload}).content.decode()
    assert "still holds the badge" in uploaded
    empty = client.post("/verify/", {"credential": "  "})
    assert empty.status_code == 400 and 'id="id_credential_error"' in empty.content.decode()
    binary = SimpleUploadedFile("x.png", b"\x89PNG\xff\xfe", content_type="image/png")
    refused = client.post("/verify/", {"file": binary})
    assert refused.status_code == 400 and "not text" in refused.content.decode()


def test_there_is_no_credential_for_a_badge_not_held(client, owner):
    make_places_badge(threshold=3)
    client.force_login(owner)
    assert client.get("/badges/places_visited_3/credential.jwt").status_code == 404
    assert not IssuedCredential.objects.exists()


def test_the_key_command_refuses_what_would_leave_no_key_or_is_unknown(db):
    from django.core.management.base import CommandError

    SigningKey.current()
    with pytest.raises(CommandError, match="name the key"):
        call_command("signing_keys", "retire")
    with pytest.raises(CommandError, match="no published key 'nope'"):
        call_command("signing_keys", "retire", "nope")
    with pytest.raises(CommandError, match="only key"):
        call_command("signing_keys", "retire", SigningKey.current().kid)
    assert SigningKey.objects.published().count() == 1


def _b64(data: str) -> str:
    return jws.base64url_encode(data)


@pytest.mark.parametrize(
    "header",
    [
        "[" * 14_000,
        '{"alg": "RS256", "kid": "http://testserver/ob/keys/0123456789abcdef", "crit": 5}',
        '{"alg": "RS256", "kid": "http://testserver/ob/keys/0123456789abcdef", "crit": [{}]}',
        '{"alg": "none", "kid": "x"}',
        '{"alg": "RS256", "kid": 7}',
        "not json at all",
    ],
)
def test_a_crafted_header_is_reported_as_not_a_credential_never_a_500(client, holder, header):
    token = ".".join([_b64(header), _b64('{"a": 1}'), "c2ln"])
    for response in (
        client.post("/ob/verify", token, content_type="text/plain"),
        client.post("/verify/", {"credential": token}),
    ):
        assert response.status_code == 200
    body = client.post("/ob/verify", token, content_type="text/plain").json()
    assert (body["verified"], body["outcome"]) == (False, "invalid")


def test_a_crafted_payload_or_body_gets_a_clear_answer_never_a_500(client, holder):
    real = download(client)
    header = real.split(".")[0]
    deep = ".".join([header, _b64("[" * 14_000), real.split(".")[2]])
    assert (
        client.post("/ob/verify", deep, content_type="text/plain").json()["outcome"] == "invalid"
    )
    nested = client.post("/ob/verify", "[" * 19_000, content_type="application/json")
    assert nested.status_code == 400 and "nested too deeply" in nested.json()["error"]
    # A key that exists, with a header it never signs with.
    kid = json.loads(jws.base64url_decode(header))["kid"]
    crit = _b64(json.dumps({"alg": "RS256", "kid": kid, "crit": ["exp"], "exp": 1}))
    token = ".".join([crit, real.split(".")[1], real.split(".")[2]])
    assert (
        client.post("/ob/verify", token, content_type="text/plain").json()["outcome"] == "invalid"
    )


def test_the_verify_page_writes_the_dates_as_the_reader_reads_them(client, holder):
    from django.utils.formats import date_format

    token = download(client)
    page = client.post("/verify/", {"credential": token}).content.decode()
    assert f">{date_format(timezone.localtime(), 'DATE_FORMAT')}</time>" in page
    french = client.post(
        "/verify/", {"credential": token}, headers={"Accept-Language": "fr"}
    ).content.decode()
    assert "Valide" in french and re.search(r">\d{1,2} \w+ 20\d\d</time>", french)


def test_a_credential_of_a_closed_account_no_longer_verifies(client, holder):
    token = download(client)
    holder.is_active = False
    holder.save()
    body = client.post("/ob/verify", token, content_type="text/plain").json()
    assert (body["verified"], body["outcome"]) == (False, "revoked")
    assert "account is closed" in body["checks"][-1]["detail"]
