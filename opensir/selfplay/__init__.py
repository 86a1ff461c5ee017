"""The OpenSIR method as pure, typed functions (DESIGN.md §1).

prompts (what the policy is asked), parsing (what it wrote), answers (what math-verify reads and the
majority vote), rewards (every term and its weighted total), selection (which groups are trained),
pool (problems and embeddings, persisted in shards), round (one round as one typed record, scored),
bootstrap (the rules of the optional in-band initial pool). Nothing here samples from a model or
touches a GPU.
"""

from opensir.selfplay.answers import Answer, Vote, majority_vote, read_answer
from opensir.selfplay.bootstrap import BootstrapProblem, BootstrapState
from opensir.selfplay.parsing import (
    TeacherOutput,
    has_final_answer_line,
    parse_teacher,
    parse_teacher_completion,
    teacher_format_ok,
)
from opensir.selfplay.pool import NewProblem, PoolProblem, ProblemPool
from opensir.selfplay.prompts import completion_loss_mask, render_prompt, student_messages, teacher_messages
from opensir.selfplay.rewards import (
    STUDENT_TERMS,
    TEACHER_TERMS,
    Reward,
    RewardTerm,
    diversity_reward,
    length_reward,
    solvability_reward,
)
from opensir.selfplay.round import (
    Candidate,
    Group,
    PlayedCandidate,
    PlayedGroup,
    Round,
    RoundStats,
    StudentSample,
    legal_problems,
    score_round,
)
from opensir.selfplay.selection import select_student_problems, select_teacher_groups

__all__ = [
    "STUDENT_TERMS",
    "TEACHER_TERMS",
    "Answer",
    "BootstrapProblem",
    "BootstrapState",
    "Candidate",
    "Group",
    "NewProblem",
    "PlayedCandidate",
    "PlayedGroup",
    "PoolProblem",
    "ProblemPool",
    "Reward",
    "RewardTerm",
    "Round",
    "RoundStats",
    "StudentSample",
    "TeacherOutput",
    "Vote",
    "completion_loss_mask",
    "diversity_reward",
    "has_final_answer_line",
    "legal_problems",
    "length_reward",
    "majority_vote",
    "parse_teacher",
    "parse_teacher_completion",
    "read_answer",
    "render_prompt",
    "score_round",
    "select_student_problems",
    "select_teacher_groups",
    "solvability_reward",
    "student_messages",
    "teacher_format_ok",
    "teacher_messages",
]
