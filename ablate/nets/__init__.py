"""The networks the objectives and decoders are built from."""

import importlib.util


def diffusers_load_kwargs() -> dict:
    """``from_pretrained`` keywords for diffusers models: without ``accelerate`` installed,
    diffusers falls back to a plain load anyway and warns about it at every load (six times
    in a demo); asking for the plain load up front is the same load, silent."""
    return {} if importlib.util.find_spec("accelerate") else {"low_cpu_mem_usage": False}
