"""toyfl: a numpy linear-regression Flower app for fedcxr's launcher tests."""
