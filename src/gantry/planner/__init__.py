"""Capacity planning (``gantry plan``) and engine-argument tuning (``gantry tune``).

Both run the simulator's engine core in virtual time (``gantry.sim.virtual``) with
the arguments the supervisor derives, so a plan describes the engines ``gantry
engine`` would start.
"""

from gantry.planner.capacity import Capacity, Probe, find_capacity
from gantry.planner.engine import Engine, plan_engine
from gantry.planner.plan import Option, Plan, PlanRequest, make_plan, plan_dict
from gantry.planner.report import plan_text
from gantry.planner.slo import Target, parse_price, parse_slo
from gantry.planner.workload import Workload, from_jobs, synthetic

__all__ = [
    "Capacity",
    "Engine",
    "Option",
    "Plan",
    "PlanRequest",
    "Probe",
    "Target",
    "Workload",
    "find_capacity",
    "from_jobs",
    "make_plan",
    "parse_price",
    "parse_slo",
    "plan_dict",
    "plan_engine",
    "plan_text",
    "synthetic",
]
