"""The file layer every job shares: local or gs:// paths (`storage`), the directories a job
owns and publishes (`outputs`), file checksums (`checksums`), the predictions format
(`predictions`). Free of JAX and TensorFlow imports."""
