"""A bucket of an S3-compatible object store, as the shared model store uses it.

``s3://BUCKET/PREFIX`` names the bucket and a key prefix; the endpoint and credentials
come from the standard variables ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``),
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN`` and
``AWS_REGION`` (or ``AWS_DEFAULT_REGION``); without keys, boto3's usual chain applies
(instance profiles, web identity). Any S3 API works: AWS S3, GCS through its
interoperability endpoint, MinIO, SeaweedFS, Ceph.

>>> parse_store_url("file:///var/lib/jacserve/models")
('file', '/var/lib/jacserve/models')
>>> parse_s3_url("s3://models/prod/jacserve")
('models', 'prod/jacserve/')
>>> parse_s3_url("s3://models")
('models', '')
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from jacserve.server.errors import Reason, Unavailable

__all__ = [
    "ARCHIVES",
    "INFOS",
    "QUARANTINE",
    "STORE_UNAVAILABLE",
    "Bucket",
    "ObjectEntry",
    "StoreUnavailable",
    "parse_s3_url",
    "parse_store_url",
]

STORE_UNAVAILABLE = Reason.MODEL_STORE_UNAVAILABLE
ARCHIVES, INFOS, QUARANTINE = "archives/", "infos/", "quarantine/"  # folders in the bucket
_MISSING = {"404", "NoSuchKey", "NotFound"}


class StoreUnavailable(Unavailable):
    """The object store did not answer (or refused our credentials); retryable (UNAVAILABLE)."""


def parse_store_url(url: str) -> tuple[str, str]:
    """(scheme, location) of a ``--model-store`` URL: ``("file", PATH)`` or
    ``("s3", URL)``.

    Raises:
        ValueError: another scheme, or a file URL with a host.
    """
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"model_store: a file URL has no host (file:///PATH); got {url!r}")
        return "file", urllib.parse.unquote(parsed.path)
    if parsed.scheme == "s3" and parsed.netloc:
        return "s3", url
    raise ValueError(f"model_store: expected file:///PATH or s3://BUCKET/PREFIX; got {url!r}")


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, key prefix ending in ``/`` or empty) of ``s3://BUCKET[/PREFIX]``.

    Raises:
        ValueError: not an ``s3://`` URL with a bucket.

    >>> parse_s3_url("s3:///x")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ValueError: ...
    """
    if not url.startswith("s3://"):
        raise ValueError(f"expected s3://BUCKET/PREFIX; got {url!r}")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"expected s3://BUCKET/PREFIX (a bucket name); got {url!r}")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


@dataclass(frozen=True)
class ObjectEntry:
    """One listed object: its key relative to the prefix, and its size."""

    name: str
    size: int


class Bucket:
    """Keys under one prefix of one bucket. Thread-safe (one boto3 client, shared).

    Every failure to reach the store is raised as :class:`StoreUnavailable`; a missing
    key is ``None``/``False`` rather than an error.

    Args:
        url: ``s3://BUCKET/PREFIX``.
        environ: where the ``AWS_*`` variables are read (default ``os.environ``).
    """

    def __init__(self, url: str, environ: Mapping[str, str] | None = None) -> None:
        import boto3  # only servers with an object store need it
        from botocore.config import Config

        env = os.environ if environ is None else environ
        self.url = url
        self.bucket, self.prefix = parse_s3_url(url)
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        config = Config(
            # only the checksums S3 requires: GCS and older MinIO refuse boto3's defaults
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 4, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            max_pool_connections=32,
            s3={"addressing_style": "path" if endpoint else "auto"},
        )
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
            aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            aws_session_token=env.get("AWS_SESSION_TOKEN") or None,
            region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            config=config,
        )

    def _key(self, name: str) -> str:
        return self.prefix + name

    def _call(self, what: str, name: str, action: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return action()
        except ClientError as exc:
            error = exc.response.get("Error", {})
            if str(error.get("Code")) in _MISSING:
                return None
            raise StoreUnavailable(
                f"the model store {self.url} refused to {what} {name!r}: "
                f"{error.get('Code')} {error.get('Message', '')}".strip(),
                store=self.url,
            ) from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(
                f"the model store {self.url} could not {what} {name!r}: {exc}", store=self.url
            ) from exc

    def exists(self, name: str) -> bool:
        """Whether ``name`` is stored (one HEAD request)."""
        found = self._call(
            "look up",
            name,
            lambda: self._client.head_object(Bucket=self.bucket, Key=self._key(name)),
        )
        return found is not None

    def put_file(self, name: str, file: BinaryIO) -> None:
        """Store the rest of ``file`` as ``name`` (multipart above 8 MiB)."""
        self._call(
            "store",
            name,
            lambda: self._client.upload_fileobj(file, self.bucket, self._key(name)),
        )

    def put_bytes(self, name: str, data: bytes) -> None:
        """Store ``data`` as ``name``."""
        self._call(
            "store",
            name,
            lambda: self._client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data),
        )

    def open(self, name: str) -> tuple[int, Iterator[bytes]] | None:
        """(size, chunks) of ``name``, or ``None`` if it is not stored."""
        reply = self._call(
            "read",
            name,
            lambda: self._client.get_object(Bucket=self.bucket, Key=self._key(name)),
        )
        if reply is None:
            return None
        return int(reply["ContentLength"]), reply["Body"].iter_chunks(1 << 20)

    def get_bytes(self, name: str, limit: int = 1 << 20) -> bytes | None:
        """The bytes of a small object (at most ``limit``), or ``None`` if it is not stored."""
        opened = self.open(name)
        if opened is None:
            return None
        data = b"".join(self._call("read", name, lambda: list(opened[1])))
        return data[:limit]

    def copy(self, source: str, target: str) -> bool:
        """Copy ``source`` to ``target``; False if ``source`` is not stored."""
        done = self._call(
            "copy",
            source,
            lambda: self._client.copy_object(
                Bucket=self.bucket,
                Key=self._key(target),
                CopySource={"Bucket": self.bucket, "Key": self._key(source)},
            ),
        )
        return done is not None

    def delete(self, name: str) -> None:
        """Delete ``name`` (nothing happens if it is not stored)."""
        self._call(
            "delete",
            name,
            lambda: self._client.delete_object(Bucket=self.bucket, Key=self._key(name)),
        )

    def list(self, folder: str) -> list[ObjectEntry]:
        """Every object whose name starts with ``folder`` (names keep ``folder``)."""

        def pages() -> list[ObjectEntry]:
            paginator = self._client.get_paginator("list_objects_v2")
            entries = []
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(folder)):
                for item in page.get("Contents", []):
                    name = item["Key"][len(self.prefix) :]
                    entries.append(ObjectEntry(name, int(item["Size"])))
            return entries

        return self._call("list", folder, pages) or []
