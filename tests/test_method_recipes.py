"""Every registered method carries the recipe its learning test trains it with (fast tier).

tests/test_method_learning.py (slow) trains each method with its class's `learning_recipe`
(bowflow/roles/base.py `Method`) plus the test's `COMMON` keys. This checks, without
training, that every method has one and that its Params accept it, so that a new method
without a recipe, or a recipe with a key its Params lost or renamed, fails here at once
rather than in the slow tier.
"""

import pytest
import test_method_learning as learning

from bowflow.roles.base import available_methods, get_method


@pytest.mark.parametrize("name", available_methods())
def test_every_method_has_a_learning_recipe_its_params_accept(name):
    cls = get_method(name)
    assert isinstance(cls.learning_recipe, dict), (
        f"method '{name}' has no learning_recipe: give its class the Params overrides under which "
        "tests/test_method_learning.py shows it learns (see bowflow/roles/base.py, Method)"
    )
    params = learning.make_params(name)  # cls.Params(**recipe) and validate(): raises if stale
    for key, value in learning.recipe(name).items():
        assert getattr(params, key) == value, key
