"""Training data: recipes (YAML), the mixture builder (`prorl data build`) and the built dataset's schema."""

from prorl.data.build import BuildResult, DataError, build, normalize_text
from prorl.data.card import load_rows, to_dataset
from prorl.data.recipe import Recipe, RecipeError, SourceConfig, load_recipe, parse_recipe
from prorl.data.stats import Issue

__all__ = ["BuildResult", "DataError", "Issue", "Recipe", "RecipeError", "SourceConfig", "build", "load_recipe",
           "load_rows", "normalize_text", "parse_recipe", "to_dataset"]
