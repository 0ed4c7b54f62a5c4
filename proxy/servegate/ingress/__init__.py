"""Where requests come in: the Databricks and OpenAI route shapes, and the error mapper."""
