"""Model registry: config names mapped to Keras 3 functional models."""

from __future__ import annotations

from typing import Callable

import keras
from keras import layers

from harness.config import ConfigError


def _cnn(inputs: keras.KerasTensor, num_classes: int) -> keras.KerasTensor:
    # "same" padding keeps the three poolings valid down to 8x8 inputs (8 -> 4 -> 2 -> 1).
    x = inputs
    for index, filters in enumerate((32, 64, 128), start=1):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{index}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{index}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(64, activation="relu", name="dense1")(x)
    return layers.Dense(num_classes, activation="softmax", name="classifier")(x)


def _lenet_300_100(inputs: keras.KerasTensor, num_classes: int) -> keras.KerasTensor:
    x = layers.Flatten(name="flatten")(inputs)
    x = layers.Dense(300, activation="relu", name="dense1")(x)
    x = layers.Dense(100, activation="relu", name="dense2")(x)
    return layers.Dense(num_classes, activation="softmax", name="classifier")(x)


def _lenet5(inputs: keras.KerasTensor, num_classes: int) -> keras.KerasTensor:
    x = layers.Conv2D(6, 5, padding="same", activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(16, 5, padding="valid", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(120, activation="relu", name="dense1")(x)
    x = layers.Dense(84, activation="relu", name="dense2")(x)
    return layers.Dense(num_classes, activation="softmax", name="classifier")(x)


MODELS: dict[str, Callable[[keras.KerasTensor, int], keras.KerasTensor]] = {
    "cnn": _cnn,
    "lenet_300_100": _lenet_300_100,
    "lenet5": _lenet5,
}

# Smallest square input each architecture accepts. lenet5's second 5x5 valid convolution needs
# at least 5x5 after the first pooling, so 10x10 inputs. cnn pools three times, so 8x8.
MIN_INPUT_SIDE = {"cnn": 8, "lenet_300_100": 1, "lenet5": 10}


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, dataset: str = "") -> keras.Model:
    """Build the named model for inputs of `input_shape` (height, width, channels).

    Raises:
        ConfigError: for an unknown name, or a model that cannot take the data set's input shape.
    """
    if name not in MODELS:
        raise ConfigError(f"model.name must be one of {', '.join(MODELS)}, got {name!r}")
    side = min(input_shape[:2])
    if side < MIN_INPUT_SIDE[name]:
        raise ConfigError(
            f"model={name} cannot take dataset={dataset or '?'}: its {input_shape[0]}x{input_shape[1]} images "
            f"are smaller than the {MIN_INPUT_SIDE[name]}x{MIN_INPUT_SIDE[name]} that {name} needs. "
            f"Use model=cnn or model=lenet_300_100 with this data set.")
    inputs = keras.Input(shape=input_shape, name="image")
    return keras.Model(inputs, MODELS[name](inputs, num_classes), name=name)


def prunable_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Return the layers whose kernels are prunable: every Conv and Dense layer."""
    kinds = (layers.Conv1D, layers.Conv2D, layers.Conv3D, layers.Dense)
    return [layer for layer in model.layers if isinstance(layer, kinds)]
