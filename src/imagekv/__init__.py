"""Probing the image key-value cache of multimodal language models.

Replication of Liu et al., "Visual Representations inside the Language Model" (COLM 2025).
"""
