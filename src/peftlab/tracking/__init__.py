"""Mechanistic tracking: what each adapter learns, layer by layer, while a run trains (the `tracker:` section).

- spectra: the quantities of one ΔW against its frozen W (norms, ranks, alignment with W's
  top and bottom singular subspaces), by a low-rank SVD from the factors when there are any;
- layers: where a method's ΔW and trainable tensors are, for every method type;
- tracker: the TrainerCallback that records them during training, resumable;
- report: a run's tracking/ files and heatmaps, and the matrix-level tables and plots.
"""
