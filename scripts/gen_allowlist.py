"""Write the default operator allowlist from the operators this torch registers.

The rule: every ``aten::`` and ``prim::`` operator, less the classes in ``DENIED`` —
I/O, process-wide state and threads, and memory-unsafe constructors — plus the
structural TorchScript node kinds that have no schema. Ordinary model code (list, tuple,
dict, int, float, bool and str operators, ``aten::item``, ``aten::warn``, data-dependent
control flow) is pure computation on values and is allowed: the confined worker process
is the security boundary (see README "Security"), and the list's job is narrower — no
I/O, no process or thread operators, nothing that reads or writes memory it does not
own. The output is a reviewable text file; regenerate with
``python scripts/gen_allowlist.py`` after a torch upgrade and read the diff.
"""

from __future__ import annotations

import pathlib
import re

import torch

OUTPUT = (
    pathlib.Path(__file__).resolve().parents[1]
    / "server/jacserve/server/registry/allowed_operators.txt"
)
NAMESPACES = ("aten", "prim")

# Each class: a pattern on the operator's name (without namespace or overload) and why.
# "Segfaults" below were seen on torch 2.13 CPU with a forged argument (an out-of-range
# index, size or offset) in a fresh process; the other members of a class share the
# mechanism. Ops that torch bounds-checks stay allowed: index/gather/scatter/take/put,
# embedding(_bag), as_strided (checked against the storage), lu_solve/lu_unpack/
# ldl_solve (pivots checked), ctc_loss, pack/pad_packed_sequence, max_unpool.
DENIED: dict[str, tuple[str, str]] = {
    # --- I/O and the process -------------------------------------------------------
    "files": (r"^(from_file|save)$", "read or write files"),
    "printing": (r"^(_print|Print)$", "write to the worker's output"),
    "threads and remote calls": (
        r"^(fork|wait|awaitable_wait|awaitable_nowait|rpc_async|rpc_remote|rpc_sync)$",
        "start threads or remote calls outside the one-request-at-a-time worker",
    ),
    "process-wide state": (
        r"^(manual_seed|seed|initial_seed|set_grad_enabled|record_stream"
        r"|_cufft_set_plan_cache_max_size)$",
        "change state that the worker's later requests see",
    ),
    "Python calls": (
        r"^(PythonOp|IgnoredPythonOp|__getstate__|__setstate__)$",
        "call back into Python",
    ),
    # --- memory-unsafe ---------------------------------------------------------------
    "uninitialized memory": (
        r"^(_?empty|new_empty)|resize",
        "return (or grow a tensor into) uninitialized memory: the worker's old heap",
    ),
    "storage rebinding": (
        r"^(set_?|set_data)$",
        "point a tensor at another storage with caller-chosen offset, sizes and strides",
    ),
    "unchecked sizes, strides and indices": (
        r"unsafe|^_reshape_alias|^segment_reduce$|^_index_put_impl_?$",
        "skip the bounds checks of their safe twin (*unsafe*, or an ``unsafe=`` flag); "
        "_reshape_alias takes sizes and strides unchecked (segfaults)",
    ),
    "sparse constructors": (
        r"^_?sparse_(coo|csr|csc|bsr|bsc|compressed)_tensor|^_coalesced_?$"
        r"|^_convert_indices_from_",
        "build sparse tensors from indices that are never checked against the size "
        "(torch.sparse_coo_tensor in TorchScript segfaults on to_dense), mark them "
        "coalesced without checking, or convert index formats trusting the indices "
        "(segfaults); dense-to-sparse conversions (to_sparse*) stay allowed",
    ),
    "nested and jagged constructors": (
        r"^_nested_(?!tensor_from_mask$|tensor_from_mask_left_aligned$|tensor_from_tensor_list$)"
        r"|jagged",
        "view a buffer through caller-given sizes, strides and offsets; the three "
        "_nested_tensor_from_* constructors TransformerEncoder uses check their mask or "
        "build from whole tensors and stay allowed",
    ),
    "quantized tensors and packed weights": (
        r"^_make_per_(tensor|channel)_quantized_tensor$|^quantize_per_|^quantized_|^q_"
        r"|^int_repr$|^dequantize$|^_choose_qparams|^fbgemm_|^_wrapped_(quantized_)?linear"
        r"|int4pack|int8pack|^_dyn_quant|semi_structured|^_cslt_",
        "reinterpret integer storage through caller-given scales, zero points and axes, "
        "or read a packed weight layout on trust; none has a derivative "
        "(fake_quantize_*, float math with checks, stays allowed)",
    ),
    "backward kernels": (
        r"backward",
        "trust the auxiliary tensors their forward saved (indices, offsets, workspaces): "
        "max_pool2d_with_indices_backward with forged indices segfaults; model code "
        "never calls them (autograd does)",
    ),
    "stateful engine helpers": (
        r"^_sobol_engine_",
        "SobolEngine's internals index their state by a caller-given dimension (segfaults)",
    ),
    # --- internal kernels no model calls directly, kept out to keep the list short ----
    "backend and optimizer internals": (
        r"^_?cuda|^_cudnn|^_use_cudnn|^_thnn|^_nnpack|mkldnn|^MKLDNN|^_foreach|^_fused"
        r"|^_test|_debug|^_dispatch",
        "backend-specific or optimizer kernels that the dispatcher calls after its "
        "checks; ordinary model code reaches them through the public operator",
    ),
}
DENIED_NAME = re.compile("|".join(f"(?:{pattern})" for pattern, _ in DENIED.values()))

STRUCTURAL_KINDS = [
    "prim::Constant",
    "prim::If",
    "prim::Loop",
    "prim::GetAttr",
    "prim::SetAttr",
    "prim::ListConstruct",
    "prim::ListUnpack",
    "prim::TupleConstruct",
    "prim::TupleUnpack",
    "prim::TupleIndex",
    "prim::TupleSlice",
    "prim::DictConstruct",
    "prim::CreateObject",
    "prim::Uninitialized",
    "prim::unchecked_cast",
    "prim::isinstance",
    "prim::RaiseException",
    "prim::Enter",
    "prim::Exit",
    "prim::Return",
    "prim::Param",
    "prim::NumToTensor",
    "prim::device",
    "prim::dtype",
    "prim::requires_grad",
    "prim::Guard",
    "prim::BailOut",
    "prim::ConstantChunk",
    "prim::MMTreeReduce",
]
EXPORT_CALLABLES = [
    "_operator.getitem",
    "_operator.add",
    "_operator.sub",
    "_operator.mul",
    "_operator.floordiv",
    "_operator.truediv",
    "_operator.mod",
    "_operator.neg",
    "_operator.pow",
    "_operator.eq",
    "_operator.ne",
    "_operator.lt",
    "_operator.le",
    "_operator.gt",
    "_operator.ge",
    "torch.sym_int",
    "torch.sym_float",
    "torch.sym_max",
    "torch.sym_min",
    "torch.sym_sqrt",
    "torch.sym_not",
    "higher_order.cond",
    "higher_order.while_loop",
    "higher_order.map_impl",
    "higher_order.wrap_with_set_grad_enabled",
]


def allowed() -> list[str]:
    """Every allowed operator (``namespace::name``, all its overloads), sorted."""
    names = {
        schema.name
        for schema in torch._C._jit_get_all_schemas()
        if schema.name.partition("::")[0] in NAMESPACES
        and not DENIED_NAME.search(schema.name.partition("::")[2])
    }
    names.update(STRUCTURAL_KINDS)
    names.update(EXPORT_CALLABLES)
    return sorted(names)


def main() -> None:
    operators = allowed()
    header = (
        f"# jacserve operator allowlist, generated by scripts/gen_allowlist.py from torch "
        f"{torch.__version__.split('+')[0]}.\n"
        "# One operator per line: namespace::name (every overload) or namespace::name.overload.\n"
    )
    OUTPUT.write_text(header + "\n".join(operators) + "\n")
    print(f"wrote {OUTPUT} ({len(operators)} operators)")


if __name__ == "__main__":
    main()
