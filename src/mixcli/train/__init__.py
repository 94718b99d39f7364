"""Fine-tuning of the vision-language models (`mix finetune`): data and loss masks, LoRA, the loop,
checkpoints and resume, PEFT adapters, several processes through paddle.distributed.launch."""
