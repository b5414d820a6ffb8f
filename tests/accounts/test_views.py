from __future__ import annotations

from django.contrib.auth import get_user_model

from tests.factories import PASSWORD


def test_signing_up_creates_the_account_and_signs_in(client, db):
    response = client.post(
        "/accounts/signup/",
        {
            "username": "newcomer",
            "password1": "a-long-passphrase-1",
            "password2": "a-long-passphrase-1",
        },
    )
    assert response.status_code == 302 and response["Location"] == "/badges/"
    assert client.get("/badges/").status_code == 200
    assert get_user_model().objects.filter(username="newcomer").exists()


def test_a_bad_sign_up_names_the_problem_and_creates_nothing(client, db):
    response = client.post(
        "/accounts/signup/",
        {
            "username": "newcomer",
            "password1": "a-long-passphrase-1",
            "password2": "different",
        },
    )
    assert response.status_code == 400
    assert "The two password fields didn’t match." in response.content.decode()
    assert not get_user_model().objects.exists()


def test_logging_in_and_out(client, owner):
    response = client.post("/accounts/login/", {"username": "owner", "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/badges/"
    assert client.post("/accounts/logout/").status_code == 302
    assert client.get("/badges/").status_code == 302


def test_a_wrong_password_is_refused_with_a_message(client, owner):
    response = client.post("/accounts/login/", {"username": "owner", "password": "nope"})
    assert response.status_code == 200
    assert "Please enter a correct username and password" in response.content.decode()


def test_forms_carry_csrf_protection(owner):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    assert (
        strict.post("/accounts/login/", {"username": "owner", "password": PASSWORD}).status_code
        == 403
    )
    strict.force_login(owner)
    assert strict.post("/places/", {"place": "1"}, HTTP_HX_REQUEST="true").status_code == 403
