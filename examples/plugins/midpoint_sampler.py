"""A new sampler for flow matching without touching ``sample()``: decorate one step.

    PYTHONPATH=examples/plugins ablate check-plugin midpoint_sampler.MidpointFlowMatching

then ``objective: {name: midpoint_sampler.MidpointFlowMatching, sampler: midpoint}`` (or
``eval.sampler: midpoint``) in a run spec.
"""

from __future__ import annotations

from ablate.objectives import sampler
from ablate.objectives.flow_matching import FlowMatching


class MidpointFlowMatching(FlowMatching):
    @sampler("midpoint")
    def midpoint_step(self, x, t, t_next, cond, guidance: float = 1.0):
        """Explicit midpoint rule: the velocity half a step ahead (second order)."""
        dt = t_next - t
        half = x + 0.5 * dt * self.velocity(x, t, cond, guidance)
        return x + dt * self.velocity(half, t + 0.5 * dt, cond, guidance)
