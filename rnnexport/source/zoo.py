"""Module classes of the project's example models (see ``docs/models.md``).

Each class here is a plain ``torch.nn.Module`` named by a model card's ``factory``
(``"rnnexport.zoo:<Class>"``) and built with the card's ``factory_kwargs``; its
weights are the module's ``state_dict()`` saved with safetensors. A card is data: its
factory is looked up in :data:`FACTORIES`, never imported. This module imports only
torch, so loading a card never pulls in the exporter.
"""

from __future__ import annotations

import torch

__all__ = ["CARD_PREFIX", "FACTORIES", "Forecaster"]

#: How a card names a class of this module.
CARD_PREFIX = "rnnexport.zoo:"


class Forecaster(torch.nn.Module):
    """A stacked ``torch.nn.LSTM`` with a linear head that forecasts the next value.

    The calling convention is time-major and stateful, so the model can be run
    one step (or one chunk) at a time in a streaming app:

    * ``x``: ``(T, B, input_size)`` real values;
    * ``state``: ``(h, c)``, each ``(num_layers, B, hidden_size)``;
    * returns ``(y, (h, c))`` with ``y`` of shape ``(T, B, output_size)``, where
      ``y[t]`` is the forecast of ``x[t + 1]``.

    ``state_dict()`` keys are ``lstm.weight_ih_l{k}``, ``lstm.weight_hh_l{k}``,
    ``lstm.bias_ih_l{k}``, ``lstm.bias_hh_l{k}`` for every layer ``k`` and
    ``head.weight``, ``head.bias``.
    """

    def __init__(
        self,
        input_size: int = 1,
        hidden_size: int = 48,
        num_layers: int = 2,
        output_size: int = 1,
    ) -> None:
        """Build the LSTM (``batch_first=False``) and its ``Linear`` head.

        Args:
            input_size: features per time step.
            hidden_size: units per LSTM layer.
            num_layers: stacked LSTM layers.
            output_size: values forecast per time step.
        """
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.output_size = output_size
        self.lstm = torch.nn.LSTM(input_size, hidden_size, num_layers=num_layers)
        self.head = torch.nn.Linear(hidden_size, output_size)

    def init_state(
        self, batch_size: int, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The zero state ``(h, c)`` for ``batch_size`` streams."""
        shape = (self.num_layers, batch_size, self.hidden_size)
        return torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Run ``x`` from ``state``; return the forecasts and the final state.

        Args:
            x: ``(T, B, input_size)``.
            state: ``(h, c)``, each ``(num_layers, B, hidden_size)``.

        Returns:
            ``(y, (h, c))`` with ``y`` of shape ``(T, B, output_size)``.
        """
        hidden, (h, c) = self.lstm(x, (state[0], state[1]))
        return self.head(hidden), (h, c)


#: The classes a model card may name (``CARD_PREFIX + name``).
FACTORIES: dict[str, type[torch.nn.Module]] = {"Forecaster": Forecaster}
