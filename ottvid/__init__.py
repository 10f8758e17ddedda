"""Training-free video token compression: the contract, the registry and OTT-Vid."""
from .contract import CompressedTokens, VideoTokens
from .registry import Compressor, build_compressor, list_methods, method_params, register

__all__ = ["VideoTokens", "CompressedTokens", "Compressor", "build_compressor", "list_methods",
           "method_params", "register"]
