"""Client of a site's own API: predictions where the data is.

Example::

    with SiteClient("127.0.0.1:7500", cert="app/cert.pem", key="app/key.pem",
                    ca="app/ca.pem", site_id="hospital-a", trust_domain="demo.insitu") as s:
        result = s.predict("bcw-mlp", {"features": rows})   # rows: float32 [n, 30]
        result.outputs["logits"]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from insitu._proto.v1 import site_pb2, site_pb2_grpc
from insitu.rpc.server import secure_channel
from insitu.sdk.client import DEFAULT_TIMEOUT_S, load_credentials
from insitu.sdk.errors import InvalidArgument, from_rpc_error

__all__ = ["Prediction", "SiteClient"]

_DTYPES = {"float32", "float64", "int64", "int32"}


@dataclass(frozen=True)
class Prediction:
    model: str
    version: str
    outputs: dict[str, np.ndarray]


def _tensor(name: str, array: np.ndarray) -> site_pb2.Tensor:
    a = np.ascontiguousarray(array)
    if a.dtype.name not in _DTYPES:
        raise InvalidArgument(
            grpc.StatusCode.INVALID_ARGUMENT, f"{name}: dtype {a.dtype.name} is not supported"
        )
    return site_pb2.Tensor(name=name, dtype=a.dtype.name, shape=list(a.shape), data=a.tobytes())


def _array(t: site_pb2.Tensor) -> np.ndarray:
    return np.frombuffer(t.data, dtype=np.dtype(t.dtype)).reshape(tuple(t.shape))


class SiteClient:
    def __init__(
        self,
        target: str,
        cert: str | Path,
        key: str | Path,
        ca: str | Path,
        *,
        site_id: str,
        trust_domain: str,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        creds = load_credentials(cert, key, ca)
        self.timeout = timeout
        # The site's certificate carries <site>.site.<td>: only a site-role cert can.
        self._channel = secure_channel(
            target, ca_pem=creds.ca_pem, creds=creds, server_name=f"{site_id}.site.{trust_domain}"
        )
        self._stub = site_pb2_grpc.SiteApiStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> SiteClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def release_features(
        self, dataset: str, job_id: str, *, timeout: float | None = None
    ) -> site_pb2.ReleaseFeaturesResponse:
        """As a data steward of this site: release de-identified features of ``dataset``
        for ``job_id`` (policy applied, k-anonymity enforced, attestation signed)."""
        try:
            return self._stub.ReleaseFeatures(
                site_pb2.ReleaseFeaturesRequest(dataset=dataset, job_id=job_id),
                timeout=timeout or 120,
            )
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def predict(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        version: str = "",
        request_id: str = "",
        timeout: float | None = None,
    ) -> Prediction:
        req = site_pb2.PredictRequest(
            model=model,
            version=version,
            request_id=request_id,
            inputs=[_tensor(n, a) for n, a in inputs.items()],
        )
        try:
            r = self._stub.Predict(req, timeout=timeout or self.timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return Prediction(r.model, r.version, {t.name: _array(t) for t in r.outputs})
