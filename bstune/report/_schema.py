"""Names in report.json that more than one reader needs: the report's own renderers and ``bstune train``."""

# what report.json's "recommended" block holds besides the training settings themselves
# ("temperature": results written before "derived" kept the effective temperature among them)
RECOMMENDATION_NOTES = frozenset(
    {
        "derived",
        "direction_doubt",
        "objective",
        "objective_at_end",
        "ends_far_worse",
        "why",
        "expected_steps_to_target",
        "expected_samples_to_target",
        "expected_steps_to_target_ci",
        "expected_samples_to_target_ci",
        "lr_table",
        "lr_rule",
        "lr_rule_kind",
        "lr_rule_b_crit",
        "temperature",
        "unread_params",
        "other_optimizer",
    }
)
