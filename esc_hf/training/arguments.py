"""Every training option with its default (the defaults are the paper's recipe), read from YAML and the command
line."""

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from ..models.esc.configuration_esc import ESC_VARIANTS, EscConfig


@dataclass
class TrainingArguments:
    # Model
    variant: str = field(default="esc-base", metadata={"help": f"ESC variant: {', '.join(ESC_VARIANTS)}"})
    init_from: str | None = field(default=None, metadata={"help": "start from this save_pretrained folder"})
    init_step: int = field(default=0, metadata={"help": "with --init_from: the step its weights reached (the "
                                                        "schedule, warm start and data continue from there)"})
    # Data
    data_dir: str | None = field(default=None, metadata={"help": "folder of audio files (recursive)"})
    val_dir: str | None = field(default=None, metadata={"help": "folder of validation audio (else a split of data)"})
    dataset: str | None = field(default=None, metadata={"help": "Hugging Face dataset name or saved path"})
    dataset_split: str = field(default="train", metadata={"help": "split of --dataset"})
    audio_column: str = field(default="audio", metadata={"help": "Audio column of --dataset"})
    streaming: bool = field(default=False, metadata={"help": "stream --dataset instead of decoding it up front"})
    val_fraction: float = field(default=0.05, metadata={"help": "files held out for validation without --val-dir"})
    crop_seconds: float = field(default=3.0, metadata={"help": "training crop (rounded down to 80*(4k-1) samples)"})
    silence_db: float = field(default=-50.0, metadata={"help": "crops quieter than this RMS (dBFS) are skipped"})
    max_val_clips: int = field(default=32, metadata={"help": "validation clips evaluated"})
    max_val_seconds: float = field(default=10.0, metadata={"help": "validation clips are cut to this length"})
    num_workers: int = field(default=2, metadata={"help": "data loader processes"})
    preprocessing_num_workers: int = field(default=1, metadata={"help": "processes decoding --data-dir's files into "
                                                                        "the cache (its first run only)"})
    cache_dir: str | None = field(default=None, metadata={"help": "decoded-audio cache (default OUTPUT/cache)"})
    # Optimisation
    batch_size: int = field(default=9, metadata={"help": "crops per device per step"})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2"})
    lr_schedule: str = field(default="constant", metadata={"help": "constant, cosine or linear (transformers)"})
    lr_warmup_steps: int = field(default=0, metadata={"help": "linear learning-rate warm-up steps"})
    restart_schedule: bool = field(default=False, metadata={"help": "with --init_from: run --lr_schedule afresh from "
                                                                   "--init_step to --max_steps, warm-up included (a "
                                                                   "new cycle for finished weights, whose optimizer "
                                                                   "moments are fresh); else it goes on from where "
                                                                   "--init_step is on it"})
    switch_warmup_steps: int = field(default=0, metadata={"help": "linear learning-rate warm-up again after the "
                                                                  "VQ switch (fresh optimizer moments)"})
    max_grad_norm: float = field(default=0.5, metadata={"help": "gradient clipping (global L2 norm)"})
    max_steps: int = field(default=250_000, metadata={"help": "optimizer steps in all"})
    time_budget_minutes: float = field(default=0.0, metadata={"help": "end the run within this much wall time from "
                                                                      "the start of training (0: off): steps 1/5 to "
                                                                      "3/5 of the learning-rate warm-up are timed, "
                                                                      "then --max_steps becomes the last step that "
                                                                      "fits, less 1/20, so the run is the one that "
                                                                      "--max_steps would give and its schedule still "
                                                                      "ends at 0; evaluations and checkpoints are not "
                                                                      "in the estimate: leave room for them. Needs a "
                                                                      "schedule that starts with the run (a new run or "
                                                                      "--restart_schedule) and --lr_warmup_steps >= 5"})
    warm_start_steps: int = field(default=46_875, metadata={"help": "steps with the quantizers bypassed"})
    quantizer_dropout: float = field(default=0.75, metadata={"help": "probability of n ~ U{1..6} streams"})
    dead_code_window: int = field(default=0, metadata={"help": "re-initialise codebook entries that no input chose "
                                                             "for this many steps from recent encoder outputs "
                                                             "(dead-code revival; 0: off, the paper's recipe)"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "batches accumulated per optimizer step"})
    mixed_precision: str = field(default="no", metadata={"help": "no, bf16 or fp16 (Accelerate)"})
    seed: int = field(default=53, metadata={"help": "seed of the weights, crops and quantizer dropout"})
    # Loss weights
    commitment_weight: float = field(default=0.25, metadata={"help": "weight of the commitment loss"})
    codebook_weight: float = field(default=1.0, metadata={"help": "weight of the codebook loss"})
    mel_weight: float = field(default=0.25, metadata={"help": "weight of the multi-scale mel L1 loss"})
    stft_weight: float = field(default=1.0, metadata={"help": "weight of the power-law complex STFT loss"})
    phase_weight: float = field(default=0.0, metadata={"help": "weight of each anti-wrapping phase loss (instantaneous "
                                                              "phase, group delay, instantaneous frequency; 0: off)"})
    complex_weight: float = field(default=0.0, metadata={"help": "weight of the magnitude-compressed complex STFT "
                                                                "and magnitude loss (0: off)"})
    # Adversarial option (ESC-Base-adv)
    adversarial: bool = field(default=False, metadata={"help": "add the DAC discriminators (second optimizer)"})
    generator_adv_weight: float = field(default=1.0, metadata={"help": "generator's adversarial loss weight"})
    feature_matching_weight: float = field(default=2.0, metadata={"help": "feature-matching loss weight"})
    discriminator_lr: float = field(default=1e-4, metadata={"help": "discriminators' learning rate"})
    discriminator_max_grad_norm: float = field(default=10.0, metadata={"help": "discriminators' gradient clipping"})
    generator_max_grad_norm_adv: float = field(default=1000.0, metadata={"help": "generator clip with --adversarial"})
    # Runs
    output_dir: str = field(default="runs/esc", metadata={"help": "checkpoints, logs, evaluation, best/ and final/"})
    save_every: int = field(default=1000, metadata={"help": "checkpoint every N steps"})
    eval_every: int = field(default=1000, metadata={"help": "evaluate every N steps (after the warm start) and at "
                                                          "the end; 0: never (no PESQ needed; best/ is final/)"})
    log_every: int = field(default=10, metadata={"help": "log the training losses every N steps"})
    keep_checkpoints: int = field(default=2, metadata={"help": "checkpoints kept besides best/ and final/"})
    resume: bool = field(default=False, metadata={"help": "continue from the latest checkpoint in output_dir"})
    report_to: str = field(default="tensorboard", metadata={"help": "Accelerate tracker, or 'none'"})
    push_to_hub: bool = field(default=False, metadata={"help": "upload best/ to the Hub at the end"})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repository for --push_to_hub (ORG/NAME)"})
    # EscConfig overrides for the model (YAML `model:` section only, e.g. a tiny CPU model)
    model_overrides: dict = field(default_factory=dict, metadata={"help": "set in the YAML `model:` section"})

    def __post_init__(self):
        if self.variant not in ESC_VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; choose one of {sorted(ESC_VARIANTS)}")
        if self.data_dir is None and self.dataset is None:
            raise ValueError("give --data-dir or --dataset")
        if self.lr_schedule not in ("constant", "cosine", "linear"):
            raise ValueError(f"lr_schedule must be constant, cosine or linear, got {self.lr_schedule!r}")
        if not 0 <= self.quantizer_dropout <= 1:
            raise ValueError("quantizer_dropout is a probability")
        for name in ("batch_size", "max_steps", "save_every", "log_every", "gradient_accumulation_steps",
                     "preprocessing_num_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.eval_every < 0:
            raise ValueError("eval_every must be >= 0 (0: no evaluation)")
        if self.init_step and not self.init_from:
            raise ValueError("--init_step continues the weights of --init_from; give --init_from too")
        if self.restart_schedule and not self.init_from:
            raise ValueError("--restart_schedule starts a new cycle for the weights of --init_from; give --init_from")
        if not 0 <= self.init_step < self.max_steps:
            raise ValueError(f"init_step must be in [0, max_steps), got {self.init_step}")
        if self.lr_warmup_steps < 0 or self.switch_warmup_steps < 0:
            raise ValueError("warm-up steps must be >= 0")
        if self.time_budget_minutes < 0:
            raise ValueError("time_budget_minutes must be >= 0 (0: off)")
        if self.time_budget_minutes and self.init_step and not self.restart_schedule:
            raise ValueError("--time_budget_minutes sets where the learning-rate schedule ends, so the schedule must "
                             "start with this run: give --restart_schedule with --init_step")
        if self.time_budget_minutes and self.lr_warmup_steps < 5:
            raise ValueError("--time_budget_minutes times steps inside the learning-rate warm-up: give "
                             "--lr_warmup_steps of at least 5")
        if self.phase_weight < 0 or self.complex_weight < 0:
            raise ValueError("loss weights must be >= 0")
        if self.dead_code_window < 0:
            raise ValueError("dead_code_window must be >= 0 (0 turns revival off)")
        if self.warm_start_steps < 0:
            raise ValueError("warm_start_steps must be >= 0")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push-to-hub needs --hub-model-id")

    def recipe_summary(self) -> str:
        """The recipe in one line of prose, for a model card (built from the fields, so the card cannot drift from
        the config that was run)."""
        precision = {"no": "float32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}[self.mixed_precision]
        warmup = f"{self.lr_warmup_steps} warm-up steps, " if self.lr_warmup_steps else ""
        cycle = f" restarted at step {self.init_step:,}" if self.restart_schedule else ""
        optimizer = f"AdamW (lr {self.learning_rate:g}, {warmup}{self.lr_schedule} schedule{cycle})"
        vq = f"VQ with quantizer dropout {self.quantizer_dropout:g}"
        if self.warm_start_steps > self.init_step:
            ramp = f" and a {self.switch_warmup_steps}-step ramp" if self.switch_warmup_steps else ""
            vq = (f"warm start with the quantizers bypassed to step {self.warm_start_steps:,}, then {vq}, fresh "
                  f"optimizer moments{ramp}")
        if self.dead_code_window:
            vq += (f", dead-code revival (codebook entries unused for {self.dead_code_window} steps re-seeded from "
                   "recent encoder outputs)")  # fmt: skip
        losses = ["power-law STFT", "multi-scale mel", "VQ"]
        if self.complex_weight:
            losses.insert(1, f"magnitude-compressed complex STFT (weight {self.complex_weight:g})")
        if self.phase_weight:
            losses.insert(1, f"anti-wrapping phase (weight {self.phase_weight:g})")
        gan = "DAC's discriminators" if self.adversarial else "no GAN"
        crops = f"{self.batch_size * self.gradient_accumulation_steps} × {self.crop_seconds:g} s crops"
        if self.gradient_accumulation_steps > 1:  # the same step as one batch: the card says how it was run
            crops += f" (as {self.gradient_accumulation_steps} accumulated batches of {self.batch_size})"
        return f"{crops}, {precision}, {optimizer}, {vq}; {' + '.join(losses)} losses; {gan}"

    def model_config(self) -> EscConfig:
        return EscConfig.from_variant(self.variant, **self.model_overrides)

    @property
    def output_path(self) -> Path:
        return Path(self.output_dir)


def parse_arguments(argv: list[str] | None = None) -> TrainingArguments:
    """`--config FILE.yaml` supplies defaults (and the `model:` section); other flags override them."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(TrainingArguments)
    # Accept the dashed spelling users type too (recent HfArgumentParsers add it themselves: not twice).
    for action in parser._actions:
        for option in list(action.option_strings):
            if "_" in option and option.replace("_", "-") not in action.option_strings:
                action.option_strings.append(option.replace("_", "-"))
                parser._option_string_actions[option.replace("_", "-")] = action
    parser.add_argument("--config", help="YAML file with any of these options; flags given here override it")
    config_path = None
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise ValueError("--config needs a file")
        config_path = Path(argv[index + 1])
    defaults = {}
    if config_path is not None:
        if not config_path.is_file():
            raise ValueError(f"config file not found: {config_path}")
        defaults = yaml.safe_load(config_path.read_text()) or {}
        known = {f.name for f in dataclasses.fields(TrainingArguments)}
        overrides = defaults.pop("model", None) or {}
        unknown = sorted(set(defaults) - known)
        if unknown:
            raise ValueError(f"unknown options in {config_path}: {unknown}")
        defaults["model_overrides"] = overrides
    for action in parser._actions:
        if action.dest in defaults and action.dest != "model_overrides":
            action.required = False
    parser.set_defaults(**defaults)
    namespace, rest = parser.parse_known_args(argv)
    if rest:
        raise ValueError(f"unknown arguments: {rest}")
    values = {k: v for k, v in vars(namespace).items() if k != "config"}
    if not isinstance(values.get("model_overrides"), dict):
        values["model_overrides"] = defaults.get("model_overrides", {})
    return TrainingArguments(**values)
