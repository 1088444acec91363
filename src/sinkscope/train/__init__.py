"""Pretraining small models with head-wise RMSNorm and the rival sink fixes."""
