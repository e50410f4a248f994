"""The three tasks and everything that depends on which one a dataset, a model or an input is for.

One registry (nnU-Net's ``dataset.json`` plays this role there): every place in petsynth that would branch on
the task name reads a :class:`Task` here instead. A task names the role of each image, the modalities
``prepare`` pairs and ``translate`` reads, the default intensity windows of the methods and the display
windows of panels and figures.

======== =========================== ========================= ================= ===========================
task     source (what the model sees) target                    guidance          phantom
======== =========================== ========================= ================= ===========================
ct2pet   CT, HU                      standard PET, SUVbw       (the CT is source) torso PET/CT
mr2pet   T1w MR, as read             standard PET, SUVbw       none              brain PET/MR
lpet2spet low-dose PET, SUVbw         standard PET, SUVbw       CT, HU            torso PET/CT + low-dose PET
======== =========================== ========================= ================= ===========================
"""

from __future__ import annotations

from dataclasses import dataclass, field

from petsynth.data.intensity import IntensityTransform

__all__ = ["CT_TASKS", "CT_WINDOW", "DEFAULT_TASK", "MR_WINDOW", "PET_WINDOW", "TASKS", "TASK_NAMES", "Task", "TaskError",
           "Window", "get_task"]


class TaskError(ValueError):
    """An unknown task name; the message lists the known ones."""


@dataclass(frozen=True)
class Window:
    """A physical-unit range: [low, high] in ``unit`` (``clip``: values outside are clipped when mapped)."""

    low: float
    high: float
    unit: str
    clip: bool = True
    log_scale: float | None = None

    def transform(self) -> IntensityTransform:
        """The intensity transform mapping this window to [-1, 1]: linearly, or through log(1 + (x - low) /
        log_scale) when ``log_scale`` is set."""
        if self.log_scale is not None:
            return IntensityTransform(kind="log", low=self.low, high=self.high, scale=self.log_scale,
                                      clip=self.clip, unit=self.unit)
        return IntensityTransform(low=self.low, high=self.high, clip=self.clip, unit=self.unit)


#: CT over the 12-bit HU range, linearly. PET in SUVbw up to 20 (lesions and bladder above that are clipped in
#: network units only: outputs and metrics stay in SUV) through log(1 + SUV / 1 SUV): the linear window put
#: tissue (SUV 0.3..3) within 0.03..0.3 of air in network units, and a diffusion model's noise (the Brownian
#: bridge's peaks at 0.71) then drowned it: CPDM's stochastic sampler put organs 12-54 % below its deterministic
#: one (README, "Why CPDM's stochastic sampler lost SUV"). MR "as read", a wide unclipped default (MR
#: intensities have no unit: set the window per dataset).
CT_WINDOW = Window(-1024.0, 3071.0, "HU")
PET_WINDOW = Window(0.0, 20.0, "SUV", log_scale=1.0)
MR_WINDOW = Window(0.0, 1000.0, "MR", clip=False)


@dataclass(frozen=True)
class Task:
    """One task (see the module docstring).

    Attributes:
        name: the registry key ("ct2pet", ...).
        title: for people ("CT -> PET").
        source_modality: DICOM Modality of the source series ("CT", "MR", "PT").
        source_label: how the source is named in panels and messages ("CT", "MR", "low-dose PET").
        source_kind: display kind of the source (:data:`petsynth.io.png.DISPLAY`: "ct", "mr", "pet").
        guidance_modality: the DICOM Modality of a guidance image the task keeps beside the source ("CT"), or None.
        ct_role: which image of a batch is the CT ("source", "guidance") or None: where the attenuation map and
            the attention segmenter take their CT from; tasks without a CT have no kVp.
        nifti_source: the key of the source among a NIfTI study's volumes ("CT", "MR", "PT_low").
        low_dose_source: the source is a lower-count PET of the target's acquisition (its dose fraction is kept).
        windows: default physical window per image role ("source", "target", "guidance").
        phantom: the simulator's anatomy ("torso" or "brain").
        translate_reads: what ``petsynth translate`` takes as input, for help texts and errors.
    """

    name: str
    title: str
    source_modality: str
    source_label: str
    source_kind: str
    guidance_modality: str | None
    ct_role: str | None
    nifti_source: str
    low_dose_source: bool
    windows: dict[str, Window] = field(hash=False)
    phantom: str
    translate_reads: str

    @property
    def has_ct(self) -> bool:
        """Whether the task's batches carry a CT (and its kVp): the attenuation and attention maps need one."""
        return self.ct_role is not None

    @property
    def roles(self) -> tuple[str, ...]:
        """The image roles of a pair: ("source", "target") plus "guidance" where the task keeps one."""
        return ("source", "target", "guidance") if self.guidance_modality else ("source", "target")

    def default_transforms(self) -> dict[str, IntensityTransform]:
        """The methods' default intensity transform per image role (fresh objects)."""
        return {role: w.transform() for role, w in self.windows.items()}


TASKS: dict[str, Task] = {
    "ct2pet": Task(
        name="ct2pet", title="CT -> PET", source_modality="CT", source_label="CT", source_kind="ct",
        guidance_modality=None, ct_role="source", nifti_source="CT", low_dose_source=False,
        windows={"source": CT_WINDOW, "target": PET_WINDOW}, phantom="torso",
        translate_reads="a CT: a DICOM study folder or a NIfTI CT in HU"),
    "mr2pet": Task(
        name="mr2pet", title="MRI -> PET", source_modality="MR", source_label="MR", source_kind="mr",
        guidance_modality=None, ct_role=None, nifti_source="MR", low_dose_source=False,
        windows={"source": MR_WINDOW, "target": PET_WINDOW}, phantom="brain",
        translate_reads="an MR: a DICOM study folder or a NIfTI MR image"),
    "lpet2spet": Task(
        name="lpet2spet", title="low-dose PET -> standard-dose PET", source_modality="PT",
        source_label="low-dose PET", source_kind="pet", guidance_modality="CT", ct_role="guidance",
        nifti_source="PT_low", low_dose_source=True,
        windows={"source": PET_WINDOW, "target": PET_WINDOW, "guidance": CT_WINDOW}, phantom="torso",
        translate_reads="a low-dose PET and its CT: a DICOM study folder, or a NIfTI PET in SUV with --ct NIfTI"),
}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)
#: The main job, and the default wherever a task is not given.
DEFAULT_TASK: str = "ct2pet"
#: The tasks whose batches carry a CT.
CT_TASKS: tuple[str, ...] = tuple(n for n, t in TASKS.items() if t.has_ct)


def get_task(name: str | Task) -> Task:
    """The :class:`Task` of a name (a Task is returned as is); :class:`TaskError` for an unknown name."""
    if isinstance(name, Task):
        return name
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise TaskError(f"unknown task {name!r}; choose one of {', '.join(TASK_NAMES)}") from None
