"""The application: training engine, inference, submission and report writing (above data/ and models/)."""
