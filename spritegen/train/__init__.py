"""Small shared pieces of every generator family's training loop (no base class, no hooks).

A family's loop (``spritegen/ldm/train.py``: text, VAE, U-Net, fine-tune) stays one short, explicit
function and calls these:

* :mod:`.config`      ``train`` params: device, seed, threads, determinism, precision, guards, logging cadence,
                      early stopping, augmentation - the settings every family shares;
* :mod:`.runtime`     :func:`start`: threads, deterministic algorithms, TF32, the device, data parallel;
* :mod:`.state`       run state saved atomically as one unit and resumed, keyed by params + code + inputs,
                      outside DVC's outs so a killed ``dvc repro`` picks up where it stopped;
* :mod:`.guards`      NaN/Inf and explosion guards decided on the device (no host sync), early stopping;
* :mod:`.optim`       AdamW (fused), per-component clipping, LR schedules, the guarded step, EMA;
* :mod:`.batches`     the data set kept on the device, per-epoch order, prompt choice and augmentation;
* :mod:`.log`         dvclive, optional TensorBoard, a loss CSV and curve PNG, progress with ETA, memory;
* :mod:`.distributed` data parallel under ``accelerate launch`` / ``torchrun``.
"""
