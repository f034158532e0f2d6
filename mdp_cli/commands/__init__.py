"""Click commands of the stages (thin layers over the library)."""
