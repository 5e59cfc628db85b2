"""The scene world: generated images with exact ground truth for every analysis.

Each scene has 1-8 everyday objects (OpenMoji emoji, 52 types) on a textured background, with
per-object masks, names and synonyms, a reference description and MME-style yes/no questions.
`fixed_set()` is the shipped 80-scene evaluation set; `training_scenes()` yields the rest.
"""

from vlmflow.scenes.background import Background
from vlmflow.scenes.fixed import (
    FIXED_SEEDS,
    TRAINING_SEEDS,
    VALIDATION_SEEDS,
    build_fixed,
    fixed_scene,
    fixed_set,
    load_fixed_scene,
    training_scenes,
    validation_scenes,
)
from vlmflow.scenes.layout import POSITIONS, SIZE_CLASSES, Placement
from vlmflow.scenes.questions import QUESTION_CATEGORIES, Question, true_answer
from vlmflow.scenes.scene import Scene, SceneObject, generate
from vlmflow.scenes.vocabulary import CATEGORIES, VOCABULARY, ObjectType

__all__ = [
    "CATEGORIES",
    "FIXED_SEEDS",
    "POSITIONS",
    "QUESTION_CATEGORIES",
    "SIZE_CLASSES",
    "TRAINING_SEEDS",
    "VALIDATION_SEEDS",
    "VOCABULARY",
    "Background",
    "ObjectType",
    "Placement",
    "Question",
    "Scene",
    "SceneObject",
    "build_fixed",
    "fixed_scene",
    "fixed_set",
    "generate",
    "load_fixed_scene",
    "training_scenes",
    "true_answer",
    "validation_scenes",
]
