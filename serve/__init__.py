"""The Ray Serve endpoint: OpenAI Images-compatible, over the batch pipeline's stage workers.

serve/config.py the config; serve/api.py requests -> work; serve/app.py the HTTP ingress and
the application; serve/deployment.py the model replicas (@serve.batch). Importing this
package is light: torch and diffusers load inside the model replicas.
"""
