"""The experiment configuration: the one model the API, the database, the CLI and the engine share.

Defaults follow the seed text (Géron, *Hands-On ML* ch. 11, TF1 ``batch_norm``/``fully_connected``).
Bounds protect a shared GPU; NaN and Infinity are rejected everywhere (``allow_inf_nan=False``).
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

DatasetName = Literal["digits", "mnist_5k", "mnist", "fashion_mnist", "synthetic"]
Activation = Literal["relu", "elu", "leaky_relu", "selu", "tanh", "sigmoid", "identity"]
Init = Literal[
    "he_normal",
    "he_uniform",
    "xavier_normal",
    "xavier_uniform",
    "lecun_normal",
    "normal",
    "default",
]
OptimizerName = Literal["sgd", "momentum", "adam", "rmsprop"]
ClippingMode = Literal["none", "value", "norm"]
Placement = Literal["before_activation", "after_activation"]

MAX_HIDDEN_LAYERS = 16
MAX_UNITS = 4096

# A split size is a fraction of the data in [0, 1) or an absolute count of samples.
SplitSize = Annotated[int, Field(ge=0)] | Annotated[float, Field(ge=0.0, lt=1.0)]


class _Strict(BaseModel):
    # strict: no silent coercion ("5" or true is not an epoch count), so bad types are errors.
    # Each field's docstring is its description: in the OpenAPI schema and docs/config.md.
    model_config = ConfigDict(
        extra="forbid", allow_inf_nan=False, validate_default=True, strict=True,
        use_attribute_docstrings=True,
    )

    @model_validator(mode="before")
    @classmethod
    def _integral_numbers(cls, data: object) -> object:
        # JSON has one number type and JSON Schema's "integer" includes 5.0, so a client's 5.0
        # is an integer here too; strict floats take ints, so every integral float may convert.
        if not isinstance(data, dict):
            return data
        return {key: [_integral(v) for v in value] if isinstance(value, list) else _integral(value)
                for key, value in data.items()}


def _integral(value: object) -> object:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _field_error(
    model: str, message: str, *fields: tuple[tuple[str, ...], object]
) -> ValidationError:
    """A cross-field error located at the offending field(s), not at the enclosing section, so
    that API clients and the CLI can point at them (``loc`` nests like any field error)."""
    error = PydanticCustomError("value_error", message)
    return ValidationError.from_exception_data(
        model, [InitErrorDetails(type=error, loc=loc, input=value) for loc, value in fields]
    )


class SyntheticConfig(_Strict):
    """Shape of the generated ``synthetic`` dataset (Gaussian class clusters)."""

    samples: int = Field(default=2000, ge=20, le=1_000_000)
    """Samples generated (before validation and test are cut from them)."""
    features: int = Field(default=784, ge=1, le=MAX_UNITS)
    """Features per sample (784 matches MNIST's input layer)."""
    classes: int = Field(default=10, ge=2, le=1000)
    """Classes, one Gaussian cluster each."""


ACROSS_FIELDS = " (a rule across fields, refused with 422)"


class DatasetConfig(_Strict):
    name: DatasetName = "digits"
    """digits (scikit-learn, bundled), mnist_5k (5,000 MNIST images, bundled), mnist and
    fashion_mnist (downloaded on first use into NORMLAB_DATA_DIR), synthetic (generated)."""
    # Rules across fields are described on the fields they are reported at: the API schema
    # publishes them to clients that cannot read the validators.
    validation_size: SplitSize = Field(default=0.1, description=(
        "Validation split: a fraction of the data, or a sample count. 0: no validation metrics. "
        "With test_size, must leave some data for training" + ACROSS_FIELDS))
    test_size: SplitSize = Field(default=0.2, description=(
        "Test split, as validation_size. Not used by mnist and fashion_mnist, which keep their "
        "official 10,000-image test set. With validation_size, must leave some data for "
        "training" + ACROSS_FIELDS))
    standardize: bool = True
    """Z-score each feature with the training split's mean and standard deviation."""
    synthetic: SyntheticConfig | None = Field(default=None, exclude_if=lambda v: v is None)
    """Shape of the synthetic dataset; only with name synthetic (given with another dataset it is
    validated, then left out of the stored config)."""

    @property
    def synthetic_shape(self) -> SyntheticConfig:
        return self.synthetic or SyntheticConfig()

    @model_validator(mode="after")
    def _synthetic_only_where_it_applies(self) -> Self:
        if self.name != "synthetic":
            self.synthetic = None
        elif self.synthetic is None:
            self.synthetic = SyntheticConfig()
        return self

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> Self:
        fractions = [s for s in (self.validation_size, self.test_size) if isinstance(s, float)]
        if sum(fractions) >= 1.0:
            raise _field_error(
                "DatasetConfig",
                "validation_size + test_size must leave some data for training",
                (("validation_size",), self.validation_size),
                (("test_size",), self.test_size),
            )
        return self


class BatchNormConfig(_Strict):
    """TF1 ``tf.contrib.layers.batch_norm`` as the seed calls it (decay 0.99, no γ by default)."""

    enabled: bool = True
    """Normalize each layer's pre-activations over the mini-batch (Ioffe & Szegedy 2015)."""
    decay: float = Field(default=0.99, gt=0.0, lt=1.0)
    """Moving-average decay of the batch statistics used at evaluation (TF1's decay; PyTorch's
    momentum is 1 - decay)."""
    epsilon: float = Field(default=0.001, gt=0.0, le=1.0)
    """Added to the variance before its square root."""
    center: bool = True
    """Learn an offset β."""
    scale: bool = False
    """Learn a scale γ (TF1's batch_norm default is off)."""
    placement: Placement = "before_activation"
    """Normalize the activation's input (the paper, Géron) or its output."""
    on_output: bool = True
    """Normalize the logits too (Géron's network does)."""


class ModelConfig(_Strict):
    hidden_layers: list[Annotated[int, Field(ge=1, le=MAX_UNITS)]] = Field(
        default_factory=lambda: [300, 100], max_length=MAX_HIDDEN_LAYERS
    )
    """Units of each hidden layer, input side first; the output layer has one unit per class."""
    activation: Activation = "elu"
    """Activation of every hidden layer."""
    init: Init = "he_normal"
    """Weight initialization (biases start at zero); default keeps PyTorch's."""
    init_std: float | None = Field(default=None, gt=0.0, le=10.0, description=(
        "Standard deviation of the normal init. Required when init is 'normal'" + ACROSS_FIELDS))
    batch_norm: BatchNormConfig = BatchNormConfig()
    """Batch normalization."""

    @model_validator(mode="after")
    def _normal_init_needs_std(self) -> Self:
        if self.init == "normal" and self.init_std is None:
            raise _field_error(
                "ModelConfig",
                "init 'normal' needs init_std (the Gaussian's standard deviation)",
                (("init_std",), None),
            )
        return self


class OptimizerConfig(_Strict):
    name: OptimizerName = "sgd"
    """sgd, momentum (SGD with momentum 0.9 unless set), adam or rmsprop."""
    learning_rate: float = Field(default=0.01, gt=0.0, le=10.0)
    """Step size."""
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Momentum of sgd, momentum and rmsprop."""
    nesterov: bool = Field(default=False, description=(
        "Nesterov momentum. Needs name 'sgd' or 'momentum' with momentum > 0" + ACROSS_FIELDS))
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0)
    """L2 penalty coefficient."""

    @model_validator(mode="before")
    @classmethod
    def _momentum_default(cls, data: object) -> object:
        # "momentum" is the seed era's MomentumOptimizer: give it the customary 0.9 unless set.
        if isinstance(data, dict) and data.get("name") == "momentum" and "momentum" not in data:
            return {**data, "momentum": 0.9}
        return data

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> Self:
        if self.nesterov and (self.name not in ("sgd", "momentum") or self.momentum == 0.0):
            raise _field_error(
                "OptimizerConfig",
                "nesterov needs optimizer 'sgd' or 'momentum' with momentum > 0",
                (("nesterov",), True),
            )
        return self


class ClippingConfig(_Strict):
    mode: ClippingMode = "none"
    """none; value clips each gradient element to [-threshold, threshold] (TF's clip_by_value); norm
    rescales the whole gradient to a global norm of at most threshold."""
    threshold: float = Field(default=1.0, gt=0.0, le=1e6)
    """The clipping bound."""


class TrainingConfig(_Strict):
    epochs: int = Field(default=20, ge=1, le=1000)
    """Passes over the training split."""
    batch_size: int = Field(default=50, ge=1, le=65536, description=(
        "Samples per optimizer step; at least 2 when model.batch_norm.enabled" + ACROSS_FIELDS))
    seed: int = Field(default=42, ge=0, le=2**32 - 1)
    """Seeds the split, the init and the shuffling: same seed, same device, same metrics."""
    max_steps: int | None = Field(default=None, ge=1, le=100_000_000)
    """Stop after this many optimizer steps, whatever the epochs."""
    log_every_steps: int = Field(default=1, ge=1, le=1_000_000)
    """Record per-step metrics (loss, gradient norms) every this many steps."""
    activation_stats_every_steps: int | None = Field(default=None, ge=1, le=1_000_000)
    """act/<layer>/p15|p50|p85 are recorded every epoch, and also every this many steps."""
    measure_prediction_cost: bool = True
    """Time eval-mode prediction at the end of the run (as trained, with BN folded, without BN)."""


class ResourcesConfig(_Strict):
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:[0-9]{1,2})?)$")] = "auto"
    """auto, cpu, cuda or cuda:N; routes the job to the gpu or cpu queue (auto:
    NORMLAB_AUTO_QUEUE)."""


class ExperimentConfig(_Strict):
    """A whole experiment. Every field has a default; unknown fields are errors."""

    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[\w .,:+=()/-]+$")] = (
        "experiment"
    )
    """A label (a preset's name when one is used; "<preset>, modified" when its recipe was
    changed)."""
    dataset: DatasetConfig = DatasetConfig()
    """The data and its splits."""
    model: ModelConfig = ModelConfig()
    """The fully connected network."""
    optimizer: OptimizerConfig = OptimizerConfig()
    """The optimizer."""
    clipping: ClippingConfig = ClippingConfig()
    """Gradient clipping."""
    training: TrainingConfig = TrainingConfig()
    """The training run."""
    resources: ResourcesConfig = ResourcesConfig()
    """Where it runs."""

    @model_validator(mode="after")
    def _batch_norm_needs_batches(self) -> Self:
        if self.model.batch_norm.enabled and self.training.batch_size < 2:
            raise _field_error(
                "ExperimentConfig",
                "training.batch_size must be at least 2 with batch_norm enabled",
                (("training", "batch_size"), self.training.batch_size),
            )
        return self
