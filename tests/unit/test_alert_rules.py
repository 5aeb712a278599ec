"""The example alert rules of deploy/, loaded and evaluated by the real promtool.

`promtool check rules` must accept them, and `promtool test rules` replays
synthetic series through them: each alert fires when its condition holds
for its `for:` duration, and stays silent on a healthy gateway.
"""

from __future__ import annotations

from pathlib import Path

from support.prometheus import promtool

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "storscp-alerts.yml"

# One minute per sample; "a+bxN" is a, then N more samples each b higher.
CASES = """
rule_files:
  - {rules}
evaluation_interval: 1m
tests:
  # A gateway that accepts associations and stores nothing, a healthy one, and
  # a modality (CT) failing 1 C-STORE in 10 while MR never fails.
  - interval: 1m
    input_series:
      - series: 'storscp_associations_total{{instance="dead",calling_ae="CT",outcome="accepted"}}'
        values: '0+2x60'
      - series: 'storscp_associations_total{{instance="good",calling_ae="CT",outcome="accepted"}}'
        values: '0+2x60'
      - series: 'storscp_instances_stored_total{{instance="good",calling_ae="CT"}}'
        values: '0+90x60'
      - series: 'storscp_cstore_failures_total{{instance="good",calling_ae="CT",status="0xA900"}}'
        values: '0+10x60'
      - series: 'storscp_instances_stored_total{{instance="good",calling_ae="MR"}}'
        values: '0+50x60'
      - series: 'storscp_cstore_failures_total{{instance="dead",calling_ae="US",status="0xA700"}}'
        values: '0+5x60'
      - series: 'storscp_storage_free_bytes{{instance="good"}}'
        values: '100000000x60'
      - series: 'storscp_storage_min_free_bytes{{instance="good"}}'
        values: '16777216x60'
      - series: 'storscp_storage_free_bytes{{instance="dead"}}'
        values: '20000000x60'
      - series: 'storscp_storage_min_free_bytes{{instance="dead"}}'
        values: '16777216x60'
    alert_rule_test:
      - eval_time: 30m
        alertname: StorscpNothingStored
        exp_alerts:
          - exp_labels: {{severity: critical, instance: dead}}
            exp_annotations:
              summary: "dead: associations but no instance stored for 15 minutes"
      - eval_time: 30m
        alertname: StorscpStoreFailures
        exp_alerts:
          - exp_labels: {{severity: warning, instance: good, calling_ae: CT}}
            exp_annotations:
              summary: "good: 10% of C-STOREs from CT fail"
          - exp_labels: {{severity: warning, instance: dead, calling_ae: US}}
            exp_annotations:
              summary: "dead: 100% of C-STOREs from US fail"
      - eval_time: 30m
        alertname: StorscpStorageLow
        exp_alerts:
          - exp_labels: {{severity: warning, instance: dead}}
            exp_annotations:
              summary: "dead: 19.07MiB free in storage_dir"
      # Not before its `for:` has passed.
      - eval_time: 3m
        alertname: StorscpStorageLow
        exp_alerts: []
"""


def test_promtool_check_rules_accepts_the_example_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 3 rules found" in result.stdout


def test_promtool_check_config_accepts_the_example_scrape_config() -> None:
    result = promtool("check", "config", str(DEPLOY / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_alert_fires_on_its_condition_and_only_then(tmp_path: Path) -> None:
    cases = tmp_path / "storscp-alerts.test.yml"
    cases.write_text(CASES.format(rules=RULES))
    result = promtool("test", "rules", str(cases))
    assert result.returncode == 0, result.stdout + result.stderr
