"""A tiny, untrained pyannote.audio 4.0 speaker-diarization pipeline directory, laid out
like pyannote's official ones, for testing the real loading code offline:

    DIR/config.yaml                        SpeakerDiarization naming $model/... checkpoints
    DIR/segmentation/pytorch_model.bin     SimpleSegmentationModel (pyannote's debug model)
    DIR/embedding/pytorch_model.bin        XVectorMFCC, 16 dimensions
    DIR/plda/xvec_transform.npz, plda.npz  an 8-dimensional PLDA (random, well-conditioned)

The weights are random (seeded): the pipeline loads and runs end to end, it does not tell
voices apart. Checkpoints are what ``Model.from_pretrained`` reads: lightning's
state_dict and hyper_parameters plus the entry ``Model.on_save_checkpoint`` adds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CONFIG_YAML = """\
version: 4.0.7
pipeline:
  name: pyannote.audio.pipelines.SpeakerDiarization
  params:
    segmentation: $model/segmentation
    embedding: $model/embedding
    plda: $model/plda
    clustering: AgglomerativeClustering
    segmentation_step: 0.5
    segmentation_batch_size: 8
    embedding_batch_size: 8
    embedding_exclude_overlap: true
params:
  segmentation:
    min_duration_off: 0.0
  clustering:
    method: average
    threshold: 0.7
    min_cluster_size: 1
"""


def _save_checkpoint(model: Any, path: Path) -> None:
    import lightning
    import torch

    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": lightning.__version__,
    }
    model.on_save_checkpoint(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)


def build_tiny_pipeline(directory: Path) -> Path:
    """Writes the pipeline into ``directory`` (created) and returns it."""
    import numpy as np
    import torch
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.embedding.xvector import XVectorMFCC
    from pyannote.audio.models.segmentation.debug import SimpleSegmentationModel

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    segmentation = SimpleSegmentationModel(sample_rate=16_000)
    segmentation.specifications = Specifications(
        problem=Problem.MONO_LABEL_CLASSIFICATION,
        resolution=Resolution.FRAME,
        duration=5.0,
        min_duration=5.0,
        classes=["speaker#1", "speaker#2", "speaker#3"],
        powerset_max_classes=2,
        permutation_invariant=True,
    )
    segmentation.setup()  # the classifier the specifications call for
    _save_checkpoint(segmentation, directory / "segmentation" / "pytorch_model.bin")

    embedding = XVectorMFCC(sample_rate=16_000, dimension=16)
    embedding.specifications = Specifications(
        problem=Problem.REPRESENTATION,
        resolution=Resolution.CHUNK,
        duration=5.0,
        min_duration=0.5,
        classes=["speaker#1", "speaker#2"],
    )
    _save_checkpoint(embedding, directory / "embedding" / "pytorch_model.bin")

    rng = np.random.default_rng(0)
    dim, lda_dim = 16, 8
    (directory / "plda").mkdir(exist_ok=True)
    np.savez(
        directory / "plda" / "xvec_transform.npz",
        mean1=np.zeros(dim),
        mean2=np.zeros(lda_dim),
        lda=np.linalg.qr(rng.standard_normal((dim, dim)))[0][:, :lda_dim],
    )
    np.savez(
        directory / "plda" / "plda.npz",
        mu=np.zeros(lda_dim),
        tr=np.eye(lda_dim) + 0.1 * rng.standard_normal((lda_dim, lda_dim)),
        psi=np.linspace(2.0, 0.5, lda_dim),
    )
    (directory / "config.yaml").write_text(CONFIG_YAML)
    return directory
