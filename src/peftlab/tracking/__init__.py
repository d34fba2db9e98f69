"""Mechanistic tracking: what each adapter learns, layer by layer, while a run trains (the `tracker:` section).

- spectra: the quantities of one ΔW against its frozen W (norms, ranks, alignment with W's
  top and bottom singular subspaces), by a low-rank SVD from the factors when there are any,
  and the intruder dimensions of W + ΔW;
- sharpness: the largest eigenvalue of the loss Hessian in the trainable parameters (Lanczos on
  Hessian-vector products), probed at initialisation;
- layers: where a method's ΔW and trainable tensors are, for every method type;
- tracker: the TrainerCallback that records them during training, resumable;
- report: a run's tracking/ files and heatmaps, and the matrix-level tables and plots.
"""
