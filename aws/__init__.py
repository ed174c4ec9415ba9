"""AWS Managed Service for Apache Flink: the application zip (``python -m aws.package``), its
entry script (``main.py``), runtime properties -> settings (``runtime.py``) and the
CloudFormation template (``cloudformation.yaml``). See docs/aws.md."""
