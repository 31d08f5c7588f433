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
    model_config = ConfigDict(
        extra="forbid", allow_inf_nan=False, validate_default=True, strict=True
    )


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
    features: int = Field(default=784, ge=1, le=MAX_UNITS)
    classes: int = Field(default=10, ge=2, le=1000)


class DatasetConfig(_Strict):
    name: DatasetName = "digits"
    validation_size: SplitSize = 0.1
    test_size: SplitSize = 0.2
    standardize: bool = True
    # Only for dataset "synthetic": given with another dataset it is validated, then left out
    # of the stored and echoed config (it would not apply).
    synthetic: SyntheticConfig | None = Field(default=None, exclude_if=lambda v: v is None)

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
    decay: float = Field(default=0.99, gt=0.0, lt=1.0)
    epsilon: float = Field(default=0.001, gt=0.0, le=1.0)
    center: bool = True
    scale: bool = False
    placement: Placement = "before_activation"
    on_output: bool = True


class ModelConfig(_Strict):
    hidden_layers: list[Annotated[int, Field(ge=1, le=MAX_UNITS)]] = Field(
        default_factory=lambda: [300, 100], max_length=MAX_HIDDEN_LAYERS
    )
    activation: Activation = "elu"
    init: Init = "he_normal"
    init_std: float | None = Field(default=None, gt=0.0, le=10.0)
    batch_norm: BatchNormConfig = BatchNormConfig()

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
    learning_rate: float = Field(default=0.01, gt=0.0, le=10.0)
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0)

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
    threshold: float = Field(default=1.0, gt=0.0, le=1e6)


class TrainingConfig(_Strict):
    epochs: int = Field(default=20, ge=1, le=1000)
    batch_size: int = Field(default=50, ge=1, le=65536)
    seed: int = Field(default=42, ge=0, le=2**32 - 1)
    max_steps: int | None = Field(default=None, ge=1, le=100_000_000)
    log_every_steps: int = Field(default=1, ge=1, le=1_000_000)
    # act/<layer>/p15|p50|p85 every epoch, and also every this many steps when set.
    activation_stats_every_steps: int | None = Field(default=None, ge=1, le=1_000_000)
    # Time eval-mode prediction at the end of the run (as trained, folded, without BN).
    measure_prediction_cost: bool = True


class ResourcesConfig(_Strict):
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:[0-9]{1,2})?)$")] = "auto"


class ExperimentConfig(_Strict):
    """A whole experiment. Every field has a default; unknown fields are errors."""

    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[\w .,:+=()/-]+$")] = (
        "experiment"
    )
    dataset: DatasetConfig = DatasetConfig()
    model: ModelConfig = ModelConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    clipping: ClippingConfig = ClippingConfig()
    training: TrainingConfig = TrainingConfig()
    resources: ResourcesConfig = ResourcesConfig()

    @model_validator(mode="after")
    def _batch_norm_needs_batches(self) -> Self:
        if self.model.batch_norm.enabled and self.training.batch_size < 2:
            raise _field_error(
                "ExperimentConfig",
                "training.batch_size must be at least 2 with batch_norm enabled",
                (("training", "batch_size"), self.training.batch_size),
            )
        return self
