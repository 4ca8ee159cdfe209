"""Guards on the public surface and on the layering between client and server."""

from __future__ import annotations

import subprocess
import sys

import jacserve.client
from jacserve.server import engine


def test_client_surface():
    assert set(jacserve.client.__all__) >= {
        "Client",
        "JacobianResult",
        "JvpResult",
        "VjpResult",
        "GradientsResult",
        "DerivativeMetrics",
        "ModelInfo",
        "JacserveError",
        "InvalidArgument",
        "NotFound",
        "ResourceExhausted",
        "DeadlineExceeded",
        "Unauthenticated",
        "Unavailable",
        "Internal",
    }
    for method in (
        "upload",
        "jvp",
        "vjp",
        "jacobian",
        "parameter_gradients",
        "get_model",
        "list_models",
        "delete_model",
    ):
        assert callable(getattr(jacserve.client.Client, method))


def test_engine_surface():
    assert set(engine.__all__) == {
        "DerivativeCache",
        "EngineMetrics",
        "EngineResult",
        "ModePlan",
        "gauss_newton_vector_products",
        "hessian",
        "hessian_vector_products",
        "jacobian",
        "jvp",
        "parameter_gradients",
        "plan_mode",
        "vjp",
    }


def _modules_loaded_by(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_client_never_imports_the_server():
    assert not any(
        m.startswith("jacserve.server") for m in _modules_loaded_by("import jacserve.client")
    )


def test_the_engine_and_registry_import_no_grpc():
    loaded = _modules_loaded_by("import jacserve.server.engine, jacserve.server.registry")
    assert not any(m == "grpc" or m.startswith("grpc.") for m in loaded)


def test_the_frontend_never_imports_torch_even_while_serving():
    """Model code can only run where torch is: the frontend process never has it."""
    serving = (
        "from jacserve.server.app import serve; from jacserve.server.config import ServerConfig; "
        "import grpc; from grpc_health.v1 import health_pb2, health_pb2_grpc; "
        "s = serve(ServerConfig(port=0, metrics_port=0, workers=1, compile='off')); "
        "health_pb2_grpc.HealthStub(grpc.insecure_channel(s.target)).Check("
        "health_pb2.HealthCheckRequest()); s.stop(0)"
    )
    loaded = _modules_loaded_by(serving)
    assert "jacserve.server.service" in loaded and "jacserve.server.worker.pool" in loaded
    assert "torch" not in loaded and "jacserve.server.engine" not in loaded
