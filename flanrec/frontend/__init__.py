"""The jobs' shared front end: gin flags and set-up (`gin_cli`), the one-line error / exit-code
wrapper and multi-process flags (`jobs`), progress lines (`progress`), the process set-up
done before JAX is imported (`runtime`)."""
