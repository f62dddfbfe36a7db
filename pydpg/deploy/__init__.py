"""The policy file and what runs it: export (``export``), the file's format and metadata
(``policy_file``), the float32 rounding bound its checks use (``rounding``), the runtime
(``runtime.Policy``), and the C++ control loop from Python with its traces (``loop``). Never imports
``pydpg.train``.
"""
