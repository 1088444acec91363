"""``sinkscope stream``: which tokens must a KV cache keep, and what does each policy cost?"""
