"""``dtpm-fast info``: what this installation can do (build, FAISS, torch, CUDA)."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    """Add ``info`` to the ``dtpm-fast`` parser."""
    info = subparsers.add_parser("info", help="show version, build and accelerator information")
    info.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    info.set_defaults(func=run_info)


def installation_info() -> dict:
    """Version, build, FAISS (CPU/GPU), torch and CUDA availability, as a JSON-able dict."""
    import dtpm_fast

    info: dict = {"version": dtpm_fast.__version__, "build": dtpm_fast.build_info()}
    try:
        import faiss

        n_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        info["faiss"] = {
            "version": faiss.__version__,
            "gpu_build": hasattr(faiss, "StandardGpuResources"),
            "gpus": int(n_gpus),
        }
    except ImportError:
        info["faiss"] = None
    try:
        import torch

        cuda = torch.cuda.is_available()
        info["torch"] = {
            "version": torch.__version__,
            "cuda_build": torch.version.cuda,
            "cuda_available": cuda,
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if cuda
            else [],
        }
    except ImportError:
        info["torch"] = None
    from dtpm_fast._device import resolve_device

    info["auto_device"] = resolve_device("auto")
    return info


def run_info(args) -> int:
    info = installation_info()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    build = info["build"]
    print(f"dtpm_fast {info['version']}")
    print("build: " + ", ".join(f"{k}={v}" for k, v in build.items() if k != "version"))
    faiss_info = info["faiss"]
    if faiss_info is None:
        print("faiss: not installed")
    else:
        kind = "GPU" if faiss_info["gpu_build"] else "CPU"
        print(f"faiss: {faiss_info['version']} ({kind} build, {faiss_info['gpus']} GPU(s) visible)")
    torch_info = info["torch"]
    if torch_info is None:
        print("torch: not installed (needed only for the parametric models)")
    else:
        cuda = ", ".join(torch_info["devices"]) if torch_info["cuda_available"] else "not available"
        print(f"torch: {torch_info['version']} (CUDA build {torch_info['cuda_build']}; CUDA {cuda})")
    print(f"device='auto' resolves to: {info['auto_device']}")
    return 0
