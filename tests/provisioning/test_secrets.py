"""Tunnel secrets are encrypted at rest and survive key rotation."""

from __future__ import annotations

import base64
import os

import pytest
from django.db import connection
from django.test import override_settings

from provisioning.models import TunnelCredential
from provisioning.secrets import SecretDecryptionError, secret_decrypt, secret_encrypt, secret_reencrypt
from provisioning.selectors.configuration import box_config_document
from provisioning.services.lifecycle import box_claim


def _key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def test_ciphertext_in_the_database_is_not_the_key(db, actor, org, provisioned, make_box):
    # given a claimed box
    box = make_box()
    box_claim(actor=actor, organization=org, serial=box.serial, claim_code="CLAIM-1234-5678")

    # when the stored column is read raw
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT kind, secret_ciphertext FROM provisioning_tunnelcredential WHERE box_id = %s", [box.pk]
        )
        stored = dict(cursor.fetchall())

    # then it differs from the plaintext the config document hands out, which decrypts from it
    document = box_config_document(box=box)
    plaintext = document["credentials"]["glorytun"]["key"]
    assert len(plaintext) == 64 and plaintext not in stored["glorytun"]
    assert secret_decrypt(stored["glorytun"]) == plaintext
    assert document["credentials"]["shadowsocks"]["password"] not in stored["shadowsocks"]
    assert len(base64.b64decode(document["credentials"]["wireguard"]["preshared_key"])) == 32
    assert TunnelCredential.objects.filter(box=box).count() == 3


def test_rotation_first_key_encrypts_all_keys_decrypt():
    old, new = _key(), _key()
    with override_settings(OTB_SECRETS_KEYS=[old]):
        sealed = secret_encrypt("tunnel-secret")
    with override_settings(OTB_SECRETS_KEYS=[new, old]):
        assert secret_decrypt(sealed) == "tunnel-secret"
        resealed = secret_reencrypt(sealed)
    with override_settings(OTB_SECRETS_KEYS=[new]):
        assert secret_decrypt(resealed) == "tunnel-secret"
        with pytest.raises(SecretDecryptionError):
            secret_decrypt(sealed)


def test_same_plaintext_encrypts_differently():
    assert secret_encrypt("x") != secret_encrypt("x")
