"""IAM on the local moto server: users with inline policies and its authentication switch.

moto checks an S3 request's signature and the signing user's IAM policies, *including* the
Resource element down to one key (``arn:aws:s3:::bucket/key``), while authentication is on
(``POST /moto-api/reset-auth``). It does not evaluate bucket policies, so a policy that denies
one key is written as the worker user's IAM policy: S3 answers the same 403 AccessDenied that
a bucket policy, a KMS key the worker may not use, or a missing key read without
s3:ListBucket gives in AWS. Switch authentication on only after uploading test objects (the
tests' own client signs with moto's placeholder keys, which are no IAM user).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import requests

READ = ["s3:GetObject", "s3:ListBucket"]


def statement(effect: str, actions: list[str], resource: str = "*") -> dict[str, Any]:
    return {"Effect": effect, "Action": actions, "Resource": resource}


def deny_key(bucket: str, key: str) -> dict[str, Any]:
    """A statement refusing GetObject on one key only."""
    return statement("Deny", ["s3:GetObject"], f"arn:aws:s3:::{bucket}/{key}")


class MotoIam:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.root = self._client("testing", "testing")
        # Policies change while authentication is on: through a user allowed everything.
        _, admin = self.user([statement("Allow", ["*"])])
        self.admin = self._client(admin["access_key_id"], admin["secret_access_key"])

    def _client(self, key_id: str, secret: str) -> Any:
        return boto3.client("iam", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=key_id, aws_secret_access_key=secret)

    def user(self, statements: list[dict[str, Any]]) -> tuple[str, dict[str, str]]:
        """A new user with one inline policy; returns its name and access key (as S3Settings
        fields)."""
        name = f"binaudit-test-{uuid.uuid4().hex[:8]}"
        self.root.create_user(UserName=name)
        self.root.put_user_policy(UserName=name, PolicyName="binaudit",
                                  PolicyDocument=_document(statements))
        key = self.root.create_access_key(UserName=name)["AccessKey"]
        return name, {"access_key_id": key["AccessKeyId"],
                      "secret_access_key": key["SecretAccessKey"]}

    def set_policy(self, user: str, statements: list[dict[str, Any]]) -> None:
        """Replace ``user``'s policy (also while authentication is on)."""
        self.admin.put_user_policy(UserName=user, PolicyName="binaudit",
                                   PolicyDocument=_document(statements))

    @contextmanager
    def authentication(self) -> Iterator[None]:
        """moto checks every request's signature and IAM policy inside the block."""
        requests.post(f"{self.endpoint}/moto-api/reset-auth", data="0", timeout=10)
        try:
            yield
        finally:
            requests.post(f"{self.endpoint}/moto-api/reset-auth", data="inf", timeout=10)


def _document(statements: list[dict[str, Any]]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": statements})
