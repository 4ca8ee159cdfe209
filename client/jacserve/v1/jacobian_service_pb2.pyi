from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Dtype(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[Dtype]
    DTYPE_FLOAT16: _ClassVar[Dtype]
    DTYPE_BFLOAT16: _ClassVar[Dtype]
    DTYPE_FLOAT32: _ClassVar[Dtype]
    DTYPE_FLOAT64: _ClassVar[Dtype]
    DTYPE_INT32: _ClassVar[Dtype]
    DTYPE_INT64: _ClassVar[Dtype]
    DTYPE_BOOL: _ClassVar[Dtype]

class TreeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TREE_KIND_UNSPECIFIED: _ClassVar[TreeKind]
    TREE_KIND_TENSOR: _ClassVar[TreeKind]
    TREE_KIND_TUPLE: _ClassVar[TreeKind]
    TREE_KIND_LIST: _ClassVar[TreeKind]
    TREE_KIND_DICT: _ClassVar[TreeKind]

class ModelFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_FORMAT_UNSPECIFIED: _ClassVar[ModelFormat]
    MODEL_FORMAT_TORCHSCRIPT: _ClassVar[ModelFormat]
    MODEL_FORMAT_TORCH_EXPORT: _ClassVar[ModelFormat]

class DerivativeMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DERIVATIVE_MODE_UNSPECIFIED: _ClassVar[DerivativeMode]
    DERIVATIVE_MODE_AUTO: _ClassVar[DerivativeMode]
    DERIVATIVE_MODE_FORWARD: _ClassVar[DerivativeMode]
    DERIVATIVE_MODE_REVERSE: _ClassVar[DerivativeMode]
DTYPE_UNSPECIFIED: Dtype
DTYPE_FLOAT16: Dtype
DTYPE_BFLOAT16: Dtype
DTYPE_FLOAT32: Dtype
DTYPE_FLOAT64: Dtype
DTYPE_INT32: Dtype
DTYPE_INT64: Dtype
DTYPE_BOOL: Dtype
TREE_KIND_UNSPECIFIED: TreeKind
TREE_KIND_TENSOR: TreeKind
TREE_KIND_TUPLE: TreeKind
TREE_KIND_LIST: TreeKind
TREE_KIND_DICT: TreeKind
MODEL_FORMAT_UNSPECIFIED: ModelFormat
MODEL_FORMAT_TORCHSCRIPT: ModelFormat
MODEL_FORMAT_TORCH_EXPORT: ModelFormat
DERIVATIVE_MODE_UNSPECIFIED: DerivativeMode
DERIVATIVE_MODE_AUTO: DerivativeMode
DERIVATIVE_MODE_FORWARD: DerivativeMode
DERIVATIVE_MODE_REVERSE: DerivativeMode

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: Dtype
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[_Union[Dtype, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Tree(_message.Message):
    __slots__ = ("kind", "children", "keys")
    KIND_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    kind: TreeKind
    children: _containers.RepeatedCompositeFieldContainer[Tree]
    keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, kind: _Optional[_Union[TreeKind, str]] = ..., children: _Optional[_Iterable[_Union[Tree, _Mapping]]] = ..., keys: _Optional[_Iterable[str]] = ...) -> None: ...

class NamedTensor(_message.Message):
    __slots__ = ("name", "tensor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    tensor: Tensor
    def __init__(self, name: _Optional[str] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class FunctionRef(_message.Message):
    __slots__ = ("model_id", "archive", "method")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    archive: bytes
    method: str
    def __init__(self, model_id: _Optional[str] = ..., archive: _Optional[bytes] = ..., method: _Optional[str] = ...) -> None: ...

class ComputeOptions(_message.Message):
    __slots__ = ("max_memory_bytes", "chunk_size", "device", "verify_directions")
    MAX_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    VERIFY_DIRECTIONS_FIELD_NUMBER: _ClassVar[int]
    max_memory_bytes: int
    chunk_size: int
    device: str
    verify_directions: int
    def __init__(self, max_memory_bytes: _Optional[int] = ..., chunk_size: _Optional[int] = ..., device: _Optional[str] = ..., verify_directions: _Optional[int] = ...) -> None: ...

class FiniteDifferenceCheck(_message.Message):
    __slots__ = ("relative_errors", "max_relative_error", "precision", "step")
    RELATIVE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    MAX_RELATIVE_ERROR_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    relative_errors: _containers.RepeatedScalarFieldContainer[float]
    max_relative_error: float
    precision: str
    step: float
    def __init__(self, relative_errors: _Optional[_Iterable[float]] = ..., max_relative_error: _Optional[float] = ..., precision: _Optional[str] = ..., step: _Optional[float] = ...) -> None: ...

class PhaseTimings(_message.Message):
    __slots__ = ("decode_seconds", "load_seconds", "forward_seconds", "derivative_seconds", "encode_seconds", "total_seconds", "plan_seconds")
    DECODE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FORWARD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DERIVATIVE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ENCODE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PLAN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    decode_seconds: float
    load_seconds: float
    forward_seconds: float
    derivative_seconds: float
    encode_seconds: float
    total_seconds: float
    plan_seconds: float
    def __init__(self, decode_seconds: _Optional[float] = ..., load_seconds: _Optional[float] = ..., forward_seconds: _Optional[float] = ..., derivative_seconds: _Optional[float] = ..., encode_seconds: _Optional[float] = ..., total_seconds: _Optional[float] = ..., plan_seconds: _Optional[float] = ...) -> None: ...

class DerivativeMetrics(_message.Message):
    __slots__ = ("mode", "mode_reason", "input_size", "output_size", "passes", "vectorized", "fallback_reason", "timing", "peak_memory_bytes", "memory_method", "nonfinite_count", "warnings", "device", "chunks", "chunk_size", "batch_size", "estimated_forward_seconds", "estimated_reverse_seconds", "memory_budget_bytes", "estimated_peak_bytes", "execution_path", "compilation", "verification", "threads", "checkpoint_segments", "recompute_seconds")
    MODE_FIELD_NUMBER: _ClassVar[int]
    MODE_REASON_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    PASSES_FIELD_NUMBER: _ClassVar[int]
    VECTORIZED_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    PEAK_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_METHOD_FIELD_NUMBER: _ClassVar[int]
    NONFINITE_COUNT_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_FORWARD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_REVERSE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_PEAK_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PATH_FIELD_NUMBER: _ClassVar[int]
    COMPILATION_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    RECOMPUTE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    mode: DerivativeMode
    mode_reason: str
    input_size: int
    output_size: int
    passes: int
    vectorized: bool
    fallback_reason: str
    timing: PhaseTimings
    peak_memory_bytes: int
    memory_method: str
    nonfinite_count: int
    warnings: _containers.RepeatedScalarFieldContainer[str]
    device: str
    chunks: int
    chunk_size: int
    batch_size: int
    estimated_forward_seconds: float
    estimated_reverse_seconds: float
    memory_budget_bytes: int
    estimated_peak_bytes: int
    execution_path: str
    compilation: str
    verification: FiniteDifferenceCheck
    threads: int
    checkpoint_segments: int
    recompute_seconds: float
    def __init__(self, mode: _Optional[_Union[DerivativeMode, str]] = ..., mode_reason: _Optional[str] = ..., input_size: _Optional[int] = ..., output_size: _Optional[int] = ..., passes: _Optional[int] = ..., vectorized: _Optional[bool] = ..., fallback_reason: _Optional[str] = ..., timing: _Optional[_Union[PhaseTimings, _Mapping]] = ..., peak_memory_bytes: _Optional[int] = ..., memory_method: _Optional[str] = ..., nonfinite_count: _Optional[int] = ..., warnings: _Optional[_Iterable[str]] = ..., device: _Optional[str] = ..., chunks: _Optional[int] = ..., chunk_size: _Optional[int] = ..., batch_size: _Optional[int] = ..., estimated_forward_seconds: _Optional[float] = ..., estimated_reverse_seconds: _Optional[float] = ..., memory_budget_bytes: _Optional[int] = ..., estimated_peak_bytes: _Optional[int] = ..., execution_path: _Optional[str] = ..., compilation: _Optional[str] = ..., verification: _Optional[_Union[FiniteDifferenceCheck, _Mapping]] = ..., threads: _Optional[int] = ..., checkpoint_segments: _Optional[int] = ..., recompute_seconds: _Optional[float] = ...) -> None: ...

class ParameterInfo(_message.Message):
    __slots__ = ("name", "shape", "dtype")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: Dtype
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[Dtype, str]] = ...) -> None: ...

class InputInfo(_message.Message):
    __slots__ = ("name", "dtype", "shape", "has_shape", "type")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    HAS_SHAPE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: Dtype
    shape: _containers.RepeatedScalarFieldContainer[int]
    has_shape: bool
    type: str
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[Dtype, str]] = ..., shape: _Optional[_Iterable[int]] = ..., has_shape: _Optional[bool] = ..., type: _Optional[str] = ...) -> None: ...

class MethodInfo(_message.Message):
    __slots__ = ("name", "inputs")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    inputs: _containers.RepeatedCompositeFieldContainer[InputInfo]
    def __init__(self, name: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[InputInfo, _Mapping]]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_id", "format", "archive_size_bytes", "methods", "parameters")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    format: ModelFormat
    archive_size_bytes: int
    methods: _containers.RepeatedCompositeFieldContainer[MethodInfo]
    parameters: _containers.RepeatedCompositeFieldContainer[ParameterInfo]
    def __init__(self, model_id: _Optional[str] = ..., format: _Optional[_Union[ModelFormat, str]] = ..., archive_size_bytes: _Optional[int] = ..., methods: _Optional[_Iterable[_Union[MethodInfo, _Mapping]]] = ..., parameters: _Optional[_Iterable[_Union[ParameterInfo, _Mapping]]] = ...) -> None: ...

class UploadModelRequest(_message.Message):
    __slots__ = ("chunk", "expected_model_id")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    chunk: bytes
    expected_model_id: str
    def __init__(self, chunk: _Optional[bytes] = ..., expected_model_id: _Optional[str] = ...) -> None: ...

class UploadModelResponse(_message.Message):
    __slots__ = ("model", "already_present")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ALREADY_PRESENT_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    already_present: bool
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ..., already_present: _Optional[bool] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class DeleteModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class DeleteModelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class JvpRequest(_message.Message):
    __slots__ = ("function", "primals", "tangents", "wrt", "batched", "options", "input_tree")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    PRIMALS_FIELD_NUMBER: _ClassVar[int]
    TANGENTS_FIELD_NUMBER: _ClassVar[int]
    WRT_FIELD_NUMBER: _ClassVar[int]
    BATCHED_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TREE_FIELD_NUMBER: _ClassVar[int]
    function: FunctionRef
    primals: _containers.RepeatedCompositeFieldContainer[Tensor]
    tangents: _containers.RepeatedCompositeFieldContainer[Tensor]
    wrt: _containers.RepeatedScalarFieldContainer[int]
    batched: bool
    options: ComputeOptions
    input_tree: Tree
    def __init__(self, function: _Optional[_Union[FunctionRef, _Mapping]] = ..., primals: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., tangents: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., wrt: _Optional[_Iterable[int]] = ..., batched: _Optional[bool] = ..., options: _Optional[_Union[ComputeOptions, _Mapping]] = ..., input_tree: _Optional[_Union[Tree, _Mapping]] = ...) -> None: ...

class JvpResponse(_message.Message):
    __slots__ = ("outputs", "tuple_output", "jvp", "metrics", "output_tree")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    TUPLE_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    JVP_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TREE_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    tuple_output: bool
    jvp: _containers.RepeatedCompositeFieldContainer[Tensor]
    metrics: DerivativeMetrics
    output_tree: Tree
    def __init__(self, outputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., tuple_output: _Optional[bool] = ..., jvp: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., metrics: _Optional[_Union[DerivativeMetrics, _Mapping]] = ..., output_tree: _Optional[_Union[Tree, _Mapping]] = ...) -> None: ...

class VjpRequest(_message.Message):
    __slots__ = ("function", "primals", "cotangents", "wrt", "batched", "options", "input_tree", "cotangent_tree")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    PRIMALS_FIELD_NUMBER: _ClassVar[int]
    COTANGENTS_FIELD_NUMBER: _ClassVar[int]
    WRT_FIELD_NUMBER: _ClassVar[int]
    BATCHED_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TREE_FIELD_NUMBER: _ClassVar[int]
    COTANGENT_TREE_FIELD_NUMBER: _ClassVar[int]
    function: FunctionRef
    primals: _containers.RepeatedCompositeFieldContainer[Tensor]
    cotangents: _containers.RepeatedCompositeFieldContainer[Tensor]
    wrt: _containers.RepeatedScalarFieldContainer[int]
    batched: bool
    options: ComputeOptions
    input_tree: Tree
    cotangent_tree: Tree
    def __init__(self, function: _Optional[_Union[FunctionRef, _Mapping]] = ..., primals: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., cotangents: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., wrt: _Optional[_Iterable[int]] = ..., batched: _Optional[bool] = ..., options: _Optional[_Union[ComputeOptions, _Mapping]] = ..., input_tree: _Optional[_Union[Tree, _Mapping]] = ..., cotangent_tree: _Optional[_Union[Tree, _Mapping]] = ...) -> None: ...

class VjpResponse(_message.Message):
    __slots__ = ("outputs", "tuple_output", "vjp", "metrics", "output_tree")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    TUPLE_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    VJP_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TREE_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    tuple_output: bool
    vjp: _containers.RepeatedCompositeFieldContainer[Tensor]
    metrics: DerivativeMetrics
    output_tree: Tree
    def __init__(self, outputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., tuple_output: _Optional[bool] = ..., vjp: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., metrics: _Optional[_Union[DerivativeMetrics, _Mapping]] = ..., output_tree: _Optional[_Union[Tree, _Mapping]] = ...) -> None: ...

class JacobianRequest(_message.Message):
    __slots__ = ("function", "inputs", "wrt", "mode", "batched", "options", "passes", "input_tree")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    WRT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    BATCHED_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    PASSES_FIELD_NUMBER: _ClassVar[int]
    INPUT_TREE_FIELD_NUMBER: _ClassVar[int]
    function: FunctionRef
    inputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    wrt: _containers.RepeatedScalarFieldContainer[int]
    mode: DerivativeMode
    batched: bool
    options: ComputeOptions
    passes: PassRange
    input_tree: Tree
    def __init__(self, function: _Optional[_Union[FunctionRef, _Mapping]] = ..., inputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., wrt: _Optional[_Iterable[int]] = ..., mode: _Optional[_Union[DerivativeMode, str]] = ..., batched: _Optional[bool] = ..., options: _Optional[_Union[ComputeOptions, _Mapping]] = ..., passes: _Optional[_Union[PassRange, _Mapping]] = ..., input_tree: _Optional[_Union[Tree, _Mapping]] = ...) -> None: ...

class PassRange(_message.Message):
    __slots__ = ("start", "stop")
    START_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    start: int
    stop: int
    def __init__(self, start: _Optional[int] = ..., stop: _Optional[int] = ...) -> None: ...

class JacobianResponse(_message.Message):
    __slots__ = ("outputs", "tuple_output", "jacobian", "metrics", "output_tree")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    TUPLE_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    JACOBIAN_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TREE_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    tuple_output: bool
    jacobian: _containers.RepeatedCompositeFieldContainer[Tensor]
    metrics: DerivativeMetrics
    output_tree: Tree
    def __init__(self, outputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., tuple_output: _Optional[bool] = ..., jacobian: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., metrics: _Optional[_Union[DerivativeMetrics, _Mapping]] = ..., output_tree: _Optional[_Union[Tree, _Mapping]] = ...) -> None: ...

class StreamJacobianRequest(_message.Message):
    __slots__ = ("request", "max_block_bytes")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_BLOCK_BYTES_FIELD_NUMBER: _ClassVar[int]
    request: JacobianRequest
    max_block_bytes: int
    def __init__(self, request: _Optional[_Union[JacobianRequest, _Mapping]] = ..., max_block_bytes: _Optional[int] = ...) -> None: ...

class JacobianStreamHeader(_message.Message):
    __slots__ = ("outputs", "tuple_output", "block_shapes", "slices", "output_tree")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    TUPLE_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SHAPES_FIELD_NUMBER: _ClassVar[int]
    SLICES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TREE_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    tuple_output: bool
    block_shapes: _containers.RepeatedCompositeFieldContainer[BlockShape]
    slices: int
    output_tree: Tree
    def __init__(self, outputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., tuple_output: _Optional[bool] = ..., block_shapes: _Optional[_Iterable[_Union[BlockShape, _Mapping]]] = ..., slices: _Optional[int] = ..., output_tree: _Optional[_Union[Tree, _Mapping]] = ...) -> None: ...

class BlockShape(_message.Message):
    __slots__ = ("dims", "dtype")
    DIMS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    dims: _containers.RepeatedScalarFieldContainer[int]
    dtype: Dtype
    def __init__(self, dims: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[Dtype, str]] = ...) -> None: ...

class JacobianSlice(_message.Message):
    __slots__ = ("block", "start", "values")
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    block: int
    start: int
    values: Tensor
    def __init__(self, block: _Optional[int] = ..., start: _Optional[int] = ..., values: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class StreamJacobianResponse(_message.Message):
    __slots__ = ("header", "slice", "metrics", "complete")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SLICE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    header: JacobianStreamHeader
    slice: JacobianSlice
    metrics: DerivativeMetrics
    complete: JacobianResponse
    def __init__(self, header: _Optional[_Union[JacobianStreamHeader, _Mapping]] = ..., slice: _Optional[_Union[JacobianSlice, _Mapping]] = ..., metrics: _Optional[_Union[DerivativeMetrics, _Mapping]] = ..., complete: _Optional[_Union[JacobianResponse, _Mapping]] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetServerInfoResponse(_message.Message):
    __slots__ = ("max_message_bytes", "max_archive_bytes", "uploads_allowed", "workers")
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_ARCHIVE_BYTES_FIELD_NUMBER: _ClassVar[int]
    UPLOADS_ALLOWED_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    max_message_bytes: int
    max_archive_bytes: int
    uploads_allowed: bool
    workers: int
    def __init__(self, max_message_bytes: _Optional[int] = ..., max_archive_bytes: _Optional[int] = ..., uploads_allowed: _Optional[bool] = ..., workers: _Optional[int] = ...) -> None: ...

class ParameterGradientsRequest(_message.Message):
    __slots__ = ("function", "inputs", "cotangents", "parameters", "options", "input_tree", "cotangent_tree")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    COTANGENTS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TREE_FIELD_NUMBER: _ClassVar[int]
    COTANGENT_TREE_FIELD_NUMBER: _ClassVar[int]
    function: FunctionRef
    inputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    cotangents: _containers.RepeatedCompositeFieldContainer[Tensor]
    parameters: _containers.RepeatedScalarFieldContainer[str]
    options: ComputeOptions
    input_tree: Tree
    cotangent_tree: Tree
    def __init__(self, function: _Optional[_Union[FunctionRef, _Mapping]] = ..., inputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., cotangents: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., parameters: _Optional[_Iterable[str]] = ..., options: _Optional[_Union[ComputeOptions, _Mapping]] = ..., input_tree: _Optional[_Union[Tree, _Mapping]] = ..., cotangent_tree: _Optional[_Union[Tree, _Mapping]] = ...) -> None: ...

class ParameterGradientsResponse(_message.Message):
    __slots__ = ("outputs", "tuple_output", "gradients", "metrics", "output_tree")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    TUPLE_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TREE_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    tuple_output: bool
    gradients: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    metrics: DerivativeMetrics
    output_tree: Tree
    def __init__(self, outputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., tuple_output: _Optional[bool] = ..., gradients: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ..., metrics: _Optional[_Union[DerivativeMetrics, _Mapping]] = ..., output_tree: _Optional[_Union[Tree, _Mapping]] = ...) -> None: ...

class HvpRequest(_message.Message):
    __slots__ = ("function", "inputs", "vectors", "wrt", "batched", "gauss_newton", "options", "input_tree")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    WRT_FIELD_NUMBER: _ClassVar[int]
    BATCHED_FIELD_NUMBER: _ClassVar[int]
    GAUSS_NEWTON_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TREE_FIELD_NUMBER: _ClassVar[int]
    function: FunctionRef
    inputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    vectors: _containers.RepeatedCompositeFieldContainer[Tensor]
    wrt: _containers.RepeatedScalarFieldContainer[int]
    batched: bool
    gauss_newton: bool
    options: ComputeOptions
    input_tree: Tree
    def __init__(self, function: _Optional[_Union[FunctionRef, _Mapping]] = ..., inputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., vectors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., wrt: _Optional[_Iterable[int]] = ..., batched: _Optional[bool] = ..., gauss_newton: _Optional[bool] = ..., options: _Optional[_Union[ComputeOptions, _Mapping]] = ..., input_tree: _Optional[_Union[Tree, _Mapping]] = ...) -> None: ...

class HvpResponse(_message.Message):
    __slots__ = ("outputs", "tuple_output", "hvp", "metrics", "output_tree")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    TUPLE_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    HVP_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TREE_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    tuple_output: bool
    hvp: _containers.RepeatedCompositeFieldContainer[Tensor]
    metrics: DerivativeMetrics
    output_tree: Tree
    def __init__(self, outputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., tuple_output: _Optional[bool] = ..., hvp: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., metrics: _Optional[_Union[DerivativeMetrics, _Mapping]] = ..., output_tree: _Optional[_Union[Tree, _Mapping]] = ...) -> None: ...

class HessianRequest(_message.Message):
    __slots__ = ("function", "inputs", "wrt", "options", "input_tree")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    WRT_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TREE_FIELD_NUMBER: _ClassVar[int]
    function: FunctionRef
    inputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    wrt: _containers.RepeatedScalarFieldContainer[int]
    options: ComputeOptions
    input_tree: Tree
    def __init__(self, function: _Optional[_Union[FunctionRef, _Mapping]] = ..., inputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., wrt: _Optional[_Iterable[int]] = ..., options: _Optional[_Union[ComputeOptions, _Mapping]] = ..., input_tree: _Optional[_Union[Tree, _Mapping]] = ...) -> None: ...

class HessianResponse(_message.Message):
    __slots__ = ("outputs", "tuple_output", "hessian", "metrics", "output_tree")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    TUPLE_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    HESSIAN_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TREE_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    tuple_output: bool
    hessian: _containers.RepeatedCompositeFieldContainer[Tensor]
    metrics: DerivativeMetrics
    output_tree: Tree
    def __init__(self, outputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., tuple_output: _Optional[bool] = ..., hessian: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., metrics: _Optional[_Union[DerivativeMetrics, _Mapping]] = ..., output_tree: _Optional[_Union[Tree, _Mapping]] = ...) -> None: ...

class SensitivityRequest(_message.Message):
    __slots__ = ("function", "inputs", "wrt", "mode", "options", "top_k", "input_tree")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    WRT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    INPUT_TREE_FIELD_NUMBER: _ClassVar[int]
    function: FunctionRef
    inputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    wrt: _containers.RepeatedScalarFieldContainer[int]
    mode: DerivativeMode
    options: ComputeOptions
    top_k: int
    input_tree: Tree
    def __init__(self, function: _Optional[_Union[FunctionRef, _Mapping]] = ..., inputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., wrt: _Optional[_Iterable[int]] = ..., mode: _Optional[_Union[DerivativeMode, str]] = ..., options: _Optional[_Union[ComputeOptions, _Mapping]] = ..., top_k: _Optional[int] = ..., input_tree: _Optional[_Union[Tree, _Mapping]] = ...) -> None: ...

class RankedInput(_message.Message):
    __slots__ = ("input", "element", "score")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    ELEMENT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    input: int
    element: int
    score: float
    def __init__(self, input: _Optional[int] = ..., element: _Optional[int] = ..., score: _Optional[float] = ...) -> None: ...

class SensitivityResponse(_message.Message):
    __slots__ = ("outputs", "tuple_output", "elasticities", "input_norms", "input_elasticity_norms", "output_norms", "output_elasticity_norms", "top_inputs", "metrics", "output_tree")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    TUPLE_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ELASTICITIES_FIELD_NUMBER: _ClassVar[int]
    INPUT_NORMS_FIELD_NUMBER: _ClassVar[int]
    INPUT_ELASTICITY_NORMS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_NORMS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_ELASTICITY_NORMS_FIELD_NUMBER: _ClassVar[int]
    TOP_INPUTS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TREE_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    tuple_output: bool
    elasticities: Tensor
    input_norms: Tensor
    input_elasticity_norms: Tensor
    output_norms: Tensor
    output_elasticity_norms: Tensor
    top_inputs: _containers.RepeatedCompositeFieldContainer[RankedInput]
    metrics: DerivativeMetrics
    output_tree: Tree
    def __init__(self, outputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., tuple_output: _Optional[bool] = ..., elasticities: _Optional[_Union[Tensor, _Mapping]] = ..., input_norms: _Optional[_Union[Tensor, _Mapping]] = ..., input_elasticity_norms: _Optional[_Union[Tensor, _Mapping]] = ..., output_norms: _Optional[_Union[Tensor, _Mapping]] = ..., output_elasticity_norms: _Optional[_Union[Tensor, _Mapping]] = ..., top_inputs: _Optional[_Iterable[_Union[RankedInput, _Mapping]]] = ..., metrics: _Optional[_Union[DerivativeMetrics, _Mapping]] = ..., output_tree: _Optional[_Union[Tree, _Mapping]] = ...) -> None: ...

class TopSingularRequest(_message.Message):
    __slots__ = ("function", "inputs", "wrt", "k", "steps", "options", "input_tree")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    WRT_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TREE_FIELD_NUMBER: _ClassVar[int]
    function: FunctionRef
    inputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    wrt: _containers.RepeatedScalarFieldContainer[int]
    k: int
    steps: int
    options: ComputeOptions
    input_tree: Tree
    def __init__(self, function: _Optional[_Union[FunctionRef, _Mapping]] = ..., inputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., wrt: _Optional[_Iterable[int]] = ..., k: _Optional[int] = ..., steps: _Optional[int] = ..., options: _Optional[_Union[ComputeOptions, _Mapping]] = ..., input_tree: _Optional[_Union[Tree, _Mapping]] = ...) -> None: ...

class TopSingularResponse(_message.Message):
    __slots__ = ("outputs", "tuple_output", "values", "input_directions", "output_directions", "residuals", "steps", "metrics", "converged", "output_tree")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    TUPLE_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    INPUT_DIRECTIONS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIRECTIONS_FIELD_NUMBER: _ClassVar[int]
    RESIDUALS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CONVERGED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TREE_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    tuple_output: bool
    values: Tensor
    input_directions: Tensor
    output_directions: Tensor
    residuals: Tensor
    steps: int
    metrics: DerivativeMetrics
    converged: bool
    output_tree: Tree
    def __init__(self, outputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., tuple_output: _Optional[bool] = ..., values: _Optional[_Union[Tensor, _Mapping]] = ..., input_directions: _Optional[_Union[Tensor, _Mapping]] = ..., output_directions: _Optional[_Union[Tensor, _Mapping]] = ..., residuals: _Optional[_Union[Tensor, _Mapping]] = ..., steps: _Optional[int] = ..., metrics: _Optional[_Union[DerivativeMetrics, _Mapping]] = ..., converged: _Optional[bool] = ..., output_tree: _Optional[_Union[Tree, _Mapping]] = ...) -> None: ...

class SparsityPattern(_message.Message):
    __slots__ = ("rows", "cols", "row_indices", "col_indices")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    ROW_INDICES_FIELD_NUMBER: _ClassVar[int]
    COL_INDICES_FIELD_NUMBER: _ClassVar[int]
    rows: int
    cols: int
    row_indices: _containers.RepeatedScalarFieldContainer[int]
    col_indices: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, rows: _Optional[int] = ..., cols: _Optional[int] = ..., row_indices: _Optional[_Iterable[int]] = ..., col_indices: _Optional[_Iterable[int]] = ...) -> None: ...

class SparseJacobianRequest(_message.Message):
    __slots__ = ("function", "inputs", "wrt", "mode", "pattern", "probes", "options", "input_tree")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    WRT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    PROBES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TREE_FIELD_NUMBER: _ClassVar[int]
    function: FunctionRef
    inputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    wrt: _containers.RepeatedScalarFieldContainer[int]
    mode: DerivativeMode
    pattern: SparsityPattern
    probes: int
    options: ComputeOptions
    input_tree: Tree
    def __init__(self, function: _Optional[_Union[FunctionRef, _Mapping]] = ..., inputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., wrt: _Optional[_Iterable[int]] = ..., mode: _Optional[_Union[DerivativeMode, str]] = ..., pattern: _Optional[_Union[SparsityPattern, _Mapping]] = ..., probes: _Optional[int] = ..., options: _Optional[_Union[ComputeOptions, _Mapping]] = ..., input_tree: _Optional[_Union[Tree, _Mapping]] = ...) -> None: ...

class SparseJacobianResponse(_message.Message):
    __slots__ = ("outputs", "tuple_output", "rows", "cols", "row_indices", "col_indices", "values", "colors", "detected", "metrics", "output_tree")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    TUPLE_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    ROW_INDICES_FIELD_NUMBER: _ClassVar[int]
    COL_INDICES_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    COLORS_FIELD_NUMBER: _ClassVar[int]
    DETECTED_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TREE_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    tuple_output: bool
    rows: int
    cols: int
    row_indices: Tensor
    col_indices: Tensor
    values: Tensor
    colors: int
    detected: bool
    metrics: DerivativeMetrics
    output_tree: Tree
    def __init__(self, outputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., tuple_output: _Optional[bool] = ..., rows: _Optional[int] = ..., cols: _Optional[int] = ..., row_indices: _Optional[_Union[Tensor, _Mapping]] = ..., col_indices: _Optional[_Union[Tensor, _Mapping]] = ..., values: _Optional[_Union[Tensor, _Mapping]] = ..., colors: _Optional[int] = ..., detected: _Optional[bool] = ..., metrics: _Optional[_Union[DerivativeMetrics, _Mapping]] = ..., output_tree: _Optional[_Union[Tree, _Mapping]] = ...) -> None: ...

class Distribution(_message.Message):
    __slots__ = ("uniform", "normal")
    UNIFORM_FIELD_NUMBER: _ClassVar[int]
    NORMAL_FIELD_NUMBER: _ClassVar[int]
    uniform: UniformLaw
    normal: NormalLaw
    def __init__(self, uniform: _Optional[_Union[UniformLaw, _Mapping]] = ..., normal: _Optional[_Union[NormalLaw, _Mapping]] = ...) -> None: ...

class UniformLaw(_message.Message):
    __slots__ = ("low", "high")
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    low: Tensor
    high: Tensor
    def __init__(self, low: _Optional[_Union[Tensor, _Mapping]] = ..., high: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class NormalLaw(_message.Message):
    __slots__ = ("mean", "std")
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    mean: Tensor
    std: Tensor
    def __init__(self, mean: _Optional[_Union[Tensor, _Mapping]] = ..., std: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class GlobalSensitivityRequest(_message.Message):
    __slots__ = ("function", "inputs", "wrt", "distributions", "samples", "seed", "bootstrap", "mode", "options", "input_tree")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    WRT_FIELD_NUMBER: _ClassVar[int]
    DISTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TREE_FIELD_NUMBER: _ClassVar[int]
    function: FunctionRef
    inputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    wrt: _containers.RepeatedScalarFieldContainer[int]
    distributions: _containers.RepeatedCompositeFieldContainer[Distribution]
    samples: int
    seed: int
    bootstrap: int
    mode: DerivativeMode
    options: ComputeOptions
    input_tree: Tree
    def __init__(self, function: _Optional[_Union[FunctionRef, _Mapping]] = ..., inputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., wrt: _Optional[_Iterable[int]] = ..., distributions: _Optional[_Iterable[_Union[Distribution, _Mapping]]] = ..., samples: _Optional[int] = ..., seed: _Optional[int] = ..., bootstrap: _Optional[int] = ..., mode: _Optional[_Union[DerivativeMode, str]] = ..., options: _Optional[_Union[ComputeOptions, _Mapping]] = ..., input_tree: _Optional[_Union[Tree, _Mapping]] = ...) -> None: ...

class ActiveSubspace(_message.Message):
    __slots__ = ("eigenvalues", "eigenvectors", "eigenvalue_lower", "eigenvalue_upper")
    EIGENVALUES_FIELD_NUMBER: _ClassVar[int]
    EIGENVECTORS_FIELD_NUMBER: _ClassVar[int]
    EIGENVALUE_LOWER_FIELD_NUMBER: _ClassVar[int]
    EIGENVALUE_UPPER_FIELD_NUMBER: _ClassVar[int]
    eigenvalues: Tensor
    eigenvectors: Tensor
    eigenvalue_lower: Tensor
    eigenvalue_upper: Tensor
    def __init__(self, eigenvalues: _Optional[_Union[Tensor, _Mapping]] = ..., eigenvectors: _Optional[_Union[Tensor, _Mapping]] = ..., eigenvalue_lower: _Optional[_Union[Tensor, _Mapping]] = ..., eigenvalue_upper: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class GlobalSensitivityResponse(_message.Message):
    __slots__ = ("dgsm", "dgsm_std_error", "total_index_bound", "output_mean", "output_variance", "active_subspaces", "samples", "metrics", "output_tree")
    DGSM_FIELD_NUMBER: _ClassVar[int]
    DGSM_STD_ERROR_FIELD_NUMBER: _ClassVar[int]
    TOTAL_INDEX_BOUND_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_MEAN_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_VARIANCE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SUBSPACES_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TREE_FIELD_NUMBER: _ClassVar[int]
    dgsm: Tensor
    dgsm_std_error: Tensor
    total_index_bound: Tensor
    output_mean: Tensor
    output_variance: Tensor
    active_subspaces: _containers.RepeatedCompositeFieldContainer[ActiveSubspace]
    samples: int
    metrics: DerivativeMetrics
    output_tree: Tree
    def __init__(self, dgsm: _Optional[_Union[Tensor, _Mapping]] = ..., dgsm_std_error: _Optional[_Union[Tensor, _Mapping]] = ..., total_index_bound: _Optional[_Union[Tensor, _Mapping]] = ..., output_mean: _Optional[_Union[Tensor, _Mapping]] = ..., output_variance: _Optional[_Union[Tensor, _Mapping]] = ..., active_subspaces: _Optional[_Iterable[_Union[ActiveSubspace, _Mapping]]] = ..., samples: _Optional[int] = ..., metrics: _Optional[_Union[DerivativeMetrics, _Mapping]] = ..., output_tree: _Optional[_Union[Tree, _Mapping]] = ...) -> None: ...

class PropagateUncertaintyRequest(_message.Message):
    __slots__ = ("function", "inputs", "wrt", "covariance", "options", "input_tree")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    WRT_FIELD_NUMBER: _ClassVar[int]
    COVARIANCE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TREE_FIELD_NUMBER: _ClassVar[int]
    function: FunctionRef
    inputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    wrt: _containers.RepeatedScalarFieldContainer[int]
    covariance: Tensor
    options: ComputeOptions
    input_tree: Tree
    def __init__(self, function: _Optional[_Union[FunctionRef, _Mapping]] = ..., inputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., wrt: _Optional[_Iterable[int]] = ..., covariance: _Optional[_Union[Tensor, _Mapping]] = ..., options: _Optional[_Union[ComputeOptions, _Mapping]] = ..., input_tree: _Optional[_Union[Tree, _Mapping]] = ...) -> None: ...

class PropagateUncertaintyResponse(_message.Message):
    __slots__ = ("outputs", "tuple_output", "covariance", "std", "method", "metrics", "output_tree")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    TUPLE_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    COVARIANCE_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TREE_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    tuple_output: bool
    covariance: Tensor
    std: Tensor
    method: str
    metrics: DerivativeMetrics
    output_tree: Tree
    def __init__(self, outputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., tuple_output: _Optional[bool] = ..., covariance: _Optional[_Union[Tensor, _Mapping]] = ..., std: _Optional[_Union[Tensor, _Mapping]] = ..., method: _Optional[str] = ..., metrics: _Optional[_Union[DerivativeMetrics, _Mapping]] = ..., output_tree: _Optional[_Union[Tree, _Mapping]] = ...) -> None: ...

class ParameterSlice(_message.Message):
    __slots__ = ("name", "start", "stop", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    start: int
    stop: int
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., start: _Optional[int] = ..., stop: _Optional[int] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class ParameterJacobianRequest(_message.Message):
    __slots__ = ("function", "inputs", "parameters", "mode", "options", "input_tree")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TREE_FIELD_NUMBER: _ClassVar[int]
    function: FunctionRef
    inputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    parameters: _containers.RepeatedScalarFieldContainer[str]
    mode: DerivativeMode
    options: ComputeOptions
    input_tree: Tree
    def __init__(self, function: _Optional[_Union[FunctionRef, _Mapping]] = ..., inputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., parameters: _Optional[_Iterable[str]] = ..., mode: _Optional[_Union[DerivativeMode, str]] = ..., options: _Optional[_Union[ComputeOptions, _Mapping]] = ..., input_tree: _Optional[_Union[Tree, _Mapping]] = ...) -> None: ...

class ParameterJacobianResponse(_message.Message):
    __slots__ = ("outputs", "tuple_output", "jacobian", "names", "metrics", "output_tree")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    TUPLE_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    JACOBIAN_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TREE_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    tuple_output: bool
    jacobian: _containers.RepeatedCompositeFieldContainer[Tensor]
    names: _containers.RepeatedScalarFieldContainer[str]
    metrics: DerivativeMetrics
    output_tree: Tree
    def __init__(self, outputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., tuple_output: _Optional[bool] = ..., jacobian: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., names: _Optional[_Iterable[str]] = ..., metrics: _Optional[_Union[DerivativeMetrics, _Mapping]] = ..., output_tree: _Optional[_Union[Tree, _Mapping]] = ...) -> None: ...

class FisherInformationRequest(_message.Message):
    __slots__ = ("function", "inputs", "parameters", "wrt", "noise_std", "noise_covariance", "options", "input_tree")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    WRT_FIELD_NUMBER: _ClassVar[int]
    NOISE_STD_FIELD_NUMBER: _ClassVar[int]
    NOISE_COVARIANCE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TREE_FIELD_NUMBER: _ClassVar[int]
    function: FunctionRef
    inputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    parameters: _containers.RepeatedScalarFieldContainer[str]
    wrt: _containers.RepeatedScalarFieldContainer[int]
    noise_std: float
    noise_covariance: Tensor
    options: ComputeOptions
    input_tree: Tree
    def __init__(self, function: _Optional[_Union[FunctionRef, _Mapping]] = ..., inputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., parameters: _Optional[_Iterable[str]] = ..., wrt: _Optional[_Iterable[int]] = ..., noise_std: _Optional[float] = ..., noise_covariance: _Optional[_Union[Tensor, _Mapping]] = ..., options: _Optional[_Union[ComputeOptions, _Mapping]] = ..., input_tree: _Optional[_Union[Tree, _Mapping]] = ...) -> None: ...

class FisherInformationResponse(_message.Message):
    __slots__ = ("outputs", "tuple_output", "matrix", "names", "eigenvalues", "standard_errors", "invertible", "metrics", "output_tree")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    TUPLE_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    MATRIX_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    EIGENVALUES_FIELD_NUMBER: _ClassVar[int]
    STANDARD_ERRORS_FIELD_NUMBER: _ClassVar[int]
    INVERTIBLE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TREE_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    tuple_output: bool
    matrix: Tensor
    names: _containers.RepeatedCompositeFieldContainer[ParameterSlice]
    eigenvalues: Tensor
    standard_errors: Tensor
    invertible: bool
    metrics: DerivativeMetrics
    output_tree: Tree
    def __init__(self, outputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., tuple_output: _Optional[bool] = ..., matrix: _Optional[_Union[Tensor, _Mapping]] = ..., names: _Optional[_Iterable[_Union[ParameterSlice, _Mapping]]] = ..., eigenvalues: _Optional[_Union[Tensor, _Mapping]] = ..., standard_errors: _Optional[_Union[Tensor, _Mapping]] = ..., invertible: _Optional[bool] = ..., metrics: _Optional[_Union[DerivativeMetrics, _Mapping]] = ..., output_tree: _Optional[_Union[Tree, _Mapping]] = ...) -> None: ...
