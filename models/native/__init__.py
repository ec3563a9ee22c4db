"""The fused LSTM kernel's C++ source; pip install builds it here (setup.py)."""
