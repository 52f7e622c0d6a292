"""Pure math on tensors: kernels, HSIC, CKA, dCKA, RSA, Procrustes, CCA, matching, semantic."""
