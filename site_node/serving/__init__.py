"""Site-local serving: signed ONNX models on ONNX Runtime behind a dynamic batcher, with
versions, a sticky canary split, promote and rollback, and an audited Predict API.

Modules, one concept each: ``config`` (config.yaml), ``artifact`` (signed metadata and
the signed message), ``repository`` (the on-disk repository, verified atomic installs),
``runtime`` (the ONNX Runtime session), ``batcher`` (dynamic batching), ``versions``
(routing and persisted serving state), ``validation`` (wire tensors), ``metrics``
(Prometheus), ``service`` (the facade) and ``servicer`` (gRPC).

Example::

    from site_node.serving import (
        ArtifactMetadata, ModelRepository, ServingRuntime, SiteApiServicer, ed25519_verifier,
    )

    runtime = ServingRuntime(ModelRepository(site_dir / "models"),
                             verifier=ed25519_verifier(model_signing_pubkey))
    runtime.start()
    runtime.deploy("mlp", 4, onnx_bytes, ArtifactMetadata.from_json_unverified(doc),
                   ed25519_verifier(model_signing_pubkey), config_yaml=cfg, canary_percent=10)
    site_pb2_grpc.add_SiteApiServicer_to_server(SiteApiServicer(runtime), server)
    ...
    runtime.rollback("mlp")
    body = runtime.metrics.exposition()
"""

from site_node.serving.artifact import ArtifactMetadata, Verifier, ed25519_verifier, signing_message
from site_node.serving.batcher import DirectRunner, DynamicBatcher, Pending
from site_node.serving.config import (
    BatchingConfig,
    ModelConfig,
    TensorSpec,
    VersionPolicy,
    parse_config,
)
from site_node.serving.metrics import ServingMetrics
from site_node.serving.repository import ModelRepository
from site_node.serving.runtime import OnnxSession
from site_node.serving.service import ModelStatus, Prediction, ServingRuntime
from site_node.serving.servicer import SiteApiServicer
from site_node.serving.validation import decode_tensors, encode_tensors, validate_inputs
from site_node.serving.versions import ModelVersions, ServingState, route_bucket

__all__ = [
    "ArtifactMetadata",
    "BatchingConfig",
    "DirectRunner",
    "DynamicBatcher",
    "ModelConfig",
    "ModelRepository",
    "ModelStatus",
    "ModelVersions",
    "OnnxSession",
    "Pending",
    "Prediction",
    "ServingMetrics",
    "ServingRuntime",
    "ServingState",
    "SiteApiServicer",
    "TensorSpec",
    "Verifier",
    "VersionPolicy",
    "decode_tensors",
    "ed25519_verifier",
    "encode_tensors",
    "parse_config",
    "route_bucket",
    "signing_message",
    "validate_inputs",
]
