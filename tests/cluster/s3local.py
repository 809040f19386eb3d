"""A private S3-compatible server on 127.0.0.1 for tests: moto's standalone server in its own
process (``python -m moto.server``), with request signing checked (``INITIAL_NO_AUTH_ACTION_COUNT``:
after the few calls that create a user and its key, every request must be signed with a key that
exists, so wrong credentials are refused as a real store refuses them). :meth:`S3Server.stop`
ends the process it started and nothing else."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Self

FREE_CALLS = 3  # create_user, create_access_key, put_user_policy: then every request is checked


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(FREE_CALLS)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=2).close()
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.2)
        boot = self._client("iam", "boot", "boot")
        boot.create_user(UserName="theme-engine-tests")
        key = boot.create_access_key(UserName="theme-engine-tests")["AccessKey"]
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        boot.put_user_policy(UserName="theme-engine-tests", PolicyName="all", PolicyDocument=json.dumps(policy))
        self.key_id, self.secret = key["AccessKeyId"], key["SecretAccessKey"]
        self.s3 = self._client("s3", self.key_id, self.secret)

    def _client(self, service: str, key_id: str, secret: str):
        import boto3

        session = boto3.session.Session(aws_access_key_id=key_id, aws_secret_access_key=secret, region_name="us-east-1")
        return session.client(service, endpoint_url=self.endpoint)

    def env(self) -> dict[str, str]:
        """The standard variables a user sets for this store."""
        return {
            "AWS_ACCESS_KEY_ID": self.key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def bucket(self, name: str) -> None:
        self.s3.create_bucket(Bucket=name)

    def upload(self, local: Path, url: str) -> str:
        bucket, key = url[len("s3://") :].split("/", 1)
        self.s3.upload_file(str(local), bucket, key)
        return url

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
