"""What the hospitals and the server share: the training and prediction loops, DP-SGD planning and accounting."""
