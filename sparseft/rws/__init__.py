"""Robust Weight Signatures: extraction, quantization, merging and the bit-exact Patcher."""
